"""Load generator for abgate and other OIP V2 servers (``abgate loadtest``); see README.md."""
