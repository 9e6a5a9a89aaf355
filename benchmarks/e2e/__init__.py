"""The parts of ``benchmarks/e2e_compare.py`` (the entry point): the request and answer
(``wire``), h2load (``h2load``), the processes under test (``processes``), CPU time from /proc
(``cpu``), runs and rounds (``measure``), py-spy (``profile``) and the report (``report``)."""
