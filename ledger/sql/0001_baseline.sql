-- The ledger's tables. Tables change only in versioned files like this one; every function lives
-- in functions.sql, which `migrate` re-applies. Every table that has a customer carries
-- customer_id, so sharding by customer needs no redesign. Customer 0 is the house (the bank
-- itself): terminal cash accounts and funding accounts belong to it.

DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ledger_switch') THEN
    CREATE ROLE ledger_switch NOLOGIN NOSUPERUSER NOBYPASSRLS;
  END IF;
END $$;

-- The row locked to serialise one customer's requests (in ascending id order, so two
-- customers' opposite transfers never deadlock). Nothing in it changes per request.
CREATE TABLE ledger.customers (
  customer_id bigint PRIMARY KEY CHECK (customer_id >= 0),
  name text NOT NULL
);
INSERT INTO ledger.customers (customer_id, name) VALUES (0, 'house');

-- Rules the database enforces whatever the switch says; set by the owner.
CREATE TABLE ledger.policy (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  pin_tries_max integer NOT NULL DEFAULT 3 CHECK (pin_tries_max > 0),
  cross_customer_transfers boolean NOT NULL DEFAULT false
);
INSERT INTO ledger.policy DEFAULT VALUES;

-- The key that verifies the HSM's word on each debit (ledger/authorisation.py), as HMAC-SHA256's
-- two pads. Read only by the owner and the SECURITY DEFINER write function.
CREATE TABLE ledger.authorisation_key (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  inner_pad bytea NOT NULL CHECK (length(inner_pad) = 64),
  outer_pad bytea NOT NULL CHECK (length(outer_pad) = 64),
  check_value text NOT NULL
);

-- fillfactor leaves room in each page so balance and usage updates stay HOT (no index entries).
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
) WITH (fillfactor = 70);

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
  usage_amount_minor bigint NOT NULL DEFAULT 0 CHECK (usage_amount_minor >= 0),
  usage_count integer NOT NULL DEFAULT 0 CHECK (usage_count >= 0),
  UNIQUE (customer_id, card_id)
) WITH (fillfactor = 70);

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
  -- Key cryptograms under the LMK: opaque text, never clear keys. bdk: the base derivation key
  -- of a DUKPT terminal's PIN pad.
  tmk text,
  tpk text,
  tak text,
  bdk text,
  cash_account_id bigint NOT NULL UNIQUE REFERENCES ledger.accounts
);

-- One row per answered request (and per opening balance): the idempotency key, the outcome a
-- repeat gets back, what a reversal reads of its original, and the journal record. `leaf` is
-- the SHA-256 of the row's fields and its postings (see ledger.leaf); (lane, block_seq) names
-- the audit block that chains it.
CREATE TABLE ledger.transactions (
  transaction_id bigint PRIMARY KEY,
  customer_id bigint NOT NULL REFERENCES ledger.customers,
  terminal_id text NOT NULL,
  transmission_time text NOT NULL,
  stan text NOT NULL,
  message_class text NOT NULL,
  kind text NOT NULL
    CHECK (kind IN ('inquiry', 'withdrawal', 'transfer', 'reversal', 'pin', 'decline', 'opening')),
  outcome text NOT NULL,
  response_code text NOT NULL,
  amount_minor bigint NOT NULL CHECK (amount_minor >= 0),
  currency text NOT NULL,
  requested_minor bigint NOT NULL,
  requested_currency text NOT NULL,
  ledger_balance_minor bigint,
  available_balance_minor bigint,
  business_date date NOT NULL,
  recorded_at timestamptz NOT NULL,
  pan_masked text NOT NULL CHECK (pan_masked = '' OR pan_masked ~ '^[0-9]{6}\*+[0-9]{4}$'),
  mti text NOT NULL,
  processing_code text NOT NULL,
  rrn text NOT NULL,
  -- A reversal's original (same customer and terminal); reversal_state marks that this row is
  -- the one reversal applied to it ('applied'), or one that came before it ('pending').
  original_transmission_time text,
  original_stan text,
  original_message_class text,
  reversal_state text CHECK (reversal_state IN ('applied', 'pending')),
  lane integer NOT NULL,
  block_seq bigint NOT NULL,
  leaf bytea NOT NULL CHECK (length(leaf) = 32),
  UNIQUE (customer_id, terminal_id, transmission_time, stan, message_class),
  CHECK (reversal_state IS NULL OR original_stan IS NOT NULL)
);
-- At most one reversal marks an original: a second one finds the mark and moves nothing.
CREATE UNIQUE INDEX transactions_reversal_mark ON ledger.transactions
  (customer_id, terminal_id, original_transmission_time, original_stan, original_message_class)
  WHERE reversal_state IS NOT NULL;
-- Reports and exports scan by time; BRIN costs almost nothing per insert.
CREATE INDEX transactions_recorded_at ON ledger.transactions USING brin (recorded_at);
CREATE SEQUENCE ledger.transaction_ids OWNED BY ledger.transactions.transaction_id;

CREATE TABLE ledger.postings (
  transaction_id bigint NOT NULL REFERENCES ledger.transactions,
  account_id bigint NOT NULL,
  customer_id bigint NOT NULL,
  amount_minor bigint NOT NULL CHECK (amount_minor <> 0),
  currency char(3) NOT NULL,
  PRIMARY KEY (transaction_id, account_id),
  FOREIGN KEY (customer_id, account_id) REFERENCES ledger.accounts (customer_id, account_id)
);

-- One block per write call and lane: the SHA-256 of the previous block's hash, the block's
-- position and its transactions' leaves in id order. Lanes let concurrent calls append without
-- waiting on one head.
CREATE TABLE ledger.audit_blocks (
  lane integer NOT NULL CHECK (lane >= 0),
  seq bigint NOT NULL CHECK (seq > 0),
  recorded_at timestamptz NOT NULL,
  transactions integer NOT NULL CHECK (transactions > 0),
  prev_hash bytea NOT NULL,
  hash bytea NOT NULL,
  PRIMARY KEY (lane, seq)
);

CREATE TABLE ledger.audit_heads (
  lane integer PRIMARY KEY,
  seq bigint NOT NULL,
  hash bytea NOT NULL
);

CREATE FUNCTION ledger.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% on %.% is refused: the journal is append-only',
    TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER no_update_delete BEFORE UPDATE OR DELETE ON ledger.transactions
  FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER no_truncate BEFORE TRUNCATE ON ledger.transactions
  FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER no_update_delete BEFORE UPDATE OR DELETE ON ledger.postings
  FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER no_truncate BEFORE TRUNCATE ON ledger.postings
  FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER no_update_delete BEFORE UPDATE OR DELETE ON ledger.audit_blocks
  FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER no_truncate BEFORE TRUNCATE ON ledger.audit_blocks
  FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();

-- Every transaction sums to zero per currency, checked once per INSERT statement over the legs
-- it inserted. A transaction's legs are inserted by one statement.
CREATE FUNCTION ledger.check_transactions_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  unbalanced_id bigint := (SELECT transaction_id FROM new_legs GROUP BY transaction_id, currency
                            HAVING sum(amount_minor) <> 0 LIMIT 1);
BEGIN
  IF unbalanced_id IS NOT NULL THEN
    RAISE EXCEPTION 'transaction % does not sum to zero per currency', unbalanced_id
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER postings_balanced AFTER INSERT ON ledger.postings
  REFERENCING NEW TABLE AS new_legs
  FOR EACH STATEMENT EXECUTE FUNCTION ledger.check_transactions_balanced();

-- Row-level security: a second wall for any role other than the owner that is ever granted
-- table access (the switch role has none: it only executes functions). Keyed on the
-- transaction-local customer ids in `app.customer_ids`.
ALTER TABLE ledger.customers ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.cards ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.card_accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.transactions ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.postings ENABLE ROW LEVEL SECURITY;
CREATE POLICY own ON ledger.customers
  USING (customer_id = ANY (nullif(current_setting('app.customer_ids', true), '')::bigint[]));
CREATE POLICY own ON ledger.cards
  USING (customer_id = ANY (nullif(current_setting('app.customer_ids', true), '')::bigint[]));
CREATE POLICY own ON ledger.card_accounts
  USING (customer_id = ANY (nullif(current_setting('app.customer_ids', true), '')::bigint[]));
CREATE POLICY own ON ledger.accounts
  USING (customer_id = ANY (nullif(current_setting('app.customer_ids', true), '')::bigint[]));
CREATE POLICY own ON ledger.transactions
  USING (customer_id = ANY (nullif(current_setting('app.customer_ids', true), '')::bigint[]));
CREATE POLICY own ON ledger.postings
  USING (customer_id = ANY (nullif(current_setting('app.customer_ids', true), '')::bigint[]));

-- The switch role: no table privilege at all (functions.sql grants it EXECUTE on a few).
REVOKE ALL ON ALL TABLES IN SCHEMA ledger FROM ledger_switch;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA ledger FROM ledger_switch;
GRANT USAGE ON SCHEMA ledger TO ledger_switch;

-- Sixteen chains: enough that concurrent write calls rarely wait for one head.
INSERT INTO ledger.audit_heads
  SELECT lane, 0, decode(repeat('00', 32), 'hex') FROM generate_series(0, 15) AS lane;
