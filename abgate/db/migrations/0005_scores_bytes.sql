-- Decoding of prediction scores shipped by the gateway as little-endian float32 bytes.
--
-- The log writer COPYs scores into its staging table as bytea: asyncpg's real[] encoder cost
-- ~3 µs a row on the gateway's event loop, bytea ~0.1 µs. The INSERT from staging decodes them
-- with these functions (~1.2 µs a row in PostgreSQL for two classes). Exact: every float32,
-- including -0, subnormals, ±Infinity and NaN, comes back as the same real.

-- The float32 at byte offset o of b (IEEE 754 binary32, little-endian). Written as a single
-- expression over simple arguments so the planner inlines it into the calling query.
CREATE FUNCTION abgate_f4le(b bytea, o integer) RETURNS real
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE
    WHEN (get_byte(b, o + 3) & 127) = 127 AND get_byte(b, o + 2) >= 128 THEN  -- exponent all 1s
        CASE
            WHEN (get_byte(b, o + 2) & 127) + get_byte(b, o + 1) + get_byte(b, o) > 0
                THEN 'NaN'::real
            WHEN get_byte(b, o + 3) >= 128 THEN '-Infinity'::real
            ELSE 'Infinity'::real
        END
    ELSE (
        -- sign × (implicit 1 unless subnormal, then 23 mantissa bits) × 2^(exponent − 150)
        (CASE WHEN get_byte(b, o + 3) >= 128 THEN -1.0::float8 ELSE 1.0::float8 END)
        * (((get_byte(b, o + 2) & 127) * 65536 + get_byte(b, o + 1) * 256 + get_byte(b, o))
           + CASE WHEN (get_byte(b, o + 3) & 127) + get_byte(b, o + 2) / 128 = 0
                  THEN 0 ELSE 8388608 END)
        * 2.0::float8 ^ (greatest((get_byte(b, o + 3) & 127) * 2 + get_byte(b, o + 2) / 128, 1)
                         - 150)
    )::real
END
$$;

-- All the float32s of b as real[] (the writer inlines up to 8 classes; this covers the rest).
CREATE FUNCTION abgate_f4le_array(b bytea) RETURNS real[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT ARRAY(SELECT abgate_f4le(b, 4 * i) FROM generate_series(0, length(b) / 4 - 1) AS i ORDER BY i)
$$;
