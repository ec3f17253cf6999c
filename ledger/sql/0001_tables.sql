-- Tables of the ledger. Every table that has a customer carries customer_id, so sharding by
-- customer later needs no redesign. Customer 0 is the house (the bank itself): terminal cash
-- accounts and funding accounts belong to it.

DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ledger_switch') THEN
    CREATE ROLE ledger_switch NOLOGIN NOSUPERUSER NOBYPASSRLS;
  END IF;
END $$;

CREATE TABLE ledger.customers (
  customer_id bigint PRIMARY KEY CHECK (customer_id >= 0),
  name text NOT NULL,
  -- Bumped by every write of the customer; a decision made on an older snapshot is re-made.
  version bigint NOT NULL DEFAULT 0
);
INSERT INTO ledger.customers (customer_id, name) VALUES (0, 'house');

CREATE TABLE ledger.accounts (
  account_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  customer_id bigint NOT NULL REFERENCES ledger.customers,
  account_number text NOT NULL UNIQUE,
  -- ISO 8583 processing-code account types; 'cash' and 'funding' are house accounts.
  type_code text NOT NULL CHECK (type_code IN ('10', '20', '30', 'cash', 'funding')),
  currency char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
  -- Credit-positive: the sum of the account's postings.
  balance_minor bigint NOT NULL DEFAULT 0,
  -- The lowest balance allowed (negative = overdraft or credit line); NULL = no floor (house).
  floor_minor bigint,
  UNIQUE (customer_id, account_id),
  CHECK (floor_minor IS NULL OR balance_minor >= floor_minor),
  CHECK ((type_code IN ('cash', 'funding')) = (customer_id = 0))
);

CREATE TABLE ledger.cards (
  card_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  customer_id bigint NOT NULL REFERENCES ledger.customers CHECK (customer_id > 0),
  pan_hash bytea NOT NULL UNIQUE,
  pan_masked text NOT NULL CHECK (pan_masked ~ '^[0-9]{6}\*+[0-9]{4}$'),
  expiry_yymm char(4) NOT NULL CHECK (expiry_yymm ~ '^[0-9]{2}(0[1-9]|1[0-2])$'),
  status text NOT NULL CHECK (status IN ('active', 'blocked', 'lost', 'stolen')),
  pin_data jsonb NOT NULL DEFAULT '{}',
  pin_tries integer NOT NULL DEFAULT 0 CHECK (pin_tries >= 0),
  currency char(3) NOT NULL,
  max_per_txn_minor bigint NOT NULL CHECK (max_per_txn_minor >= 0),
  daily_amount_minor bigint NOT NULL CHECK (daily_amount_minor >= 0),
  daily_count integer NOT NULL CHECK (daily_count >= 0),
  usage_day date,
  usage_amount_minor bigint NOT NULL DEFAULT 0,
  usage_count integer NOT NULL DEFAULT 0,
  UNIQUE (customer_id, card_id)
);

CREATE TABLE ledger.card_accounts (
  customer_id bigint NOT NULL,
  card_id bigint NOT NULL,
  type_code text NOT NULL CHECK (type_code IN ('10', '20', '30')),
  account_id bigint NOT NULL,
  PRIMARY KEY (card_id, type_code),
  -- The composite keys make a link to another customer's account impossible.
  FOREIGN KEY (customer_id, card_id) REFERENCES ledger.cards (customer_id, card_id),
  FOREIGN KEY (customer_id, account_id) REFERENCES ledger.accounts (customer_id, account_id)
);

CREATE TABLE ledger.terminals (
  terminal_id text PRIMARY KEY,
  location text NOT NULL,
  status text NOT NULL CHECK (status IN ('active', 'inactive')),
  -- Key cryptograms under the LMK: opaque text, never clear keys.
  tmk text,
  tpk text,
  tak text,
  cash_account_id bigint NOT NULL UNIQUE REFERENCES ledger.accounts
);

CREATE SEQUENCE ledger.entry_ids;

CREATE TABLE ledger.journal_entries (
  entry_id bigint PRIMARY KEY,
  customer_id bigint NOT NULL REFERENCES ledger.customers,
  terminal_id text,
  kind text NOT NULL CHECK (kind IN ('withdrawal', 'transfer', 'reversal', 'opening')),
  business_date date NOT NULL,
  created_at timestamptz NOT NULL
);
CREATE INDEX journal_entries_business_date ON ledger.journal_entries (business_date, terminal_id);

CREATE TABLE ledger.postings (
  entry_id bigint NOT NULL REFERENCES ledger.journal_entries,
  account_id bigint NOT NULL,
  customer_id bigint NOT NULL,
  amount_minor bigint NOT NULL CHECK (amount_minor <> 0),
  currency char(3) NOT NULL,
  PRIMARY KEY (entry_id, account_id),
  FOREIGN KEY (customer_id, account_id) REFERENCES ledger.accounts (customer_id, account_id)
);
CREATE INDEX postings_account ON ledger.postings (account_id);

-- Checked at commit, once all of an entry's postings are in.
CREATE FUNCTION ledger.check_entry_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (
    SELECT 1 FROM ledger.postings WHERE entry_id = NEW.entry_id
    GROUP BY currency HAVING sum(amount_minor) <> 0
  ) THEN
    RAISE EXCEPTION 'journal entry % does not sum to zero per currency', NEW.entry_id
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER postings_balanced AFTER INSERT ON ledger.postings
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger.check_entry_balanced();

-- The stored outcome of every answered request: repeats return it and post nothing.
CREATE TABLE ledger.requests (
  customer_id bigint NOT NULL,
  terminal_id text NOT NULL,
  transmission_time text NOT NULL,
  stan text NOT NULL,
  message_class text NOT NULL,
  outcome text NOT NULL,
  result jsonb NOT NULL,
  entry_id bigint,
  created_at timestamptz NOT NULL,
  PRIMARY KEY (customer_id, terminal_id, transmission_time, stan, message_class)
);

-- Keyed on the original's key: at most one reversal applies; 'pending' = it came first.
CREATE TABLE ledger.reversals (
  customer_id bigint NOT NULL,
  terminal_id text NOT NULL,
  transmission_time text NOT NULL,
  stan text NOT NULL,
  message_class text NOT NULL,
  state text NOT NULL CHECK (state IN ('applied', 'pending')),
  created_at timestamptz NOT NULL,
  PRIMARY KEY (customer_id, terminal_id, transmission_time, stan, message_class)
);

-- One hash chain per terminal: the head is locked only by that terminal's requests.
CREATE TABLE ledger.audit_heads (
  terminal_id text PRIMARY KEY,
  seq bigint NOT NULL,
  hash text NOT NULL
);

CREATE TABLE ledger.audit (
  terminal_id text NOT NULL,
  seq bigint NOT NULL CHECK (seq > 0),
  customer_id bigint NOT NULL,
  recorded_at timestamptz NOT NULL,
  entry_id bigint,
  -- Canonical JSON of the record; the hash covers prev_hash, terminal_id, seq and body.
  body text NOT NULL,
  prev_hash text NOT NULL,
  hash text NOT NULL,
  PRIMARY KEY (terminal_id, seq)
);
CREATE INDEX audit_recorded_at ON ledger.audit (recorded_at);

CREATE FUNCTION ledger.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% on %.% is refused: the audit journal is append-only',
    TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_no_update_delete BEFORE UPDATE OR DELETE ON ledger.audit
  FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON ledger.audit
  FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER postings_no_update_delete BEFORE UPDATE OR DELETE ON ledger.postings
  FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER postings_no_truncate BEFORE TRUNCATE ON ledger.postings
  FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
