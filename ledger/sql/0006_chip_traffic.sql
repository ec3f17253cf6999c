-- Chip requests per traffic bucket: the denominator of the ARQC failure ratio (a chip request
-- refused for its cryptogram, its counter or its PSN is answered 63, counted in response_codes).
ALTER TABLE ledger.terminal_traffic
  ADD COLUMN chip integer NOT NULL DEFAULT 0 CHECK (chip >= 0 AND chip <= financial);
