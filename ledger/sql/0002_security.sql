-- Row-level security keyed on the transaction-local customer ids in `app.customer_ids`
-- (an array literal such as '{7}' or '{7,9}' for an admitted cross-customer transfer). The
-- switch connects as ledger_switch: not the owner, not superuser, no BYPASSRLS. House rows
-- (customer 0: terminal cash, funding, requests without a card) stay reachable so postings
-- can touch them without exposing any customer.

-- Written out in every policy rather than called: an inlined SQL function is parsed again at
-- every planning, which showed up as a large share of the ledger's CPU.

ALTER TABLE ledger.customers ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.cards ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.card_accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.journal_entries ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.postings ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.requests ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.reversals ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.audit ENABLE ROW LEVEL SECURITY;

CREATE POLICY own ON ledger.customers
  USING (customer_id = ANY (nullif(current_setting('app.customer_ids', true), '')::bigint[]));
CREATE POLICY own ON ledger.cards
  USING (customer_id = ANY (nullif(current_setting('app.customer_ids', true), '')::bigint[]));
CREATE POLICY own ON ledger.card_accounts
  USING (customer_id = ANY (nullif(current_setting('app.customer_ids', true), '')::bigint[]));
CREATE POLICY own ON ledger.journal_entries
  USING (customer_id = ANY (nullif(current_setting('app.customer_ids', true), '')::bigint[]));
CREATE POLICY own_or_house ON ledger.accounts
  USING (customer_id = ANY (nullif(current_setting('app.customer_ids', true), '')::bigint[]) OR customer_id = 0);
CREATE POLICY own_or_house ON ledger.postings
  USING (customer_id = ANY (nullif(current_setting('app.customer_ids', true), '')::bigint[]) OR customer_id = 0);
CREATE POLICY own_or_house ON ledger.requests
  USING (customer_id = ANY (nullif(current_setting('app.customer_ids', true), '')::bigint[]) OR customer_id = 0);
CREATE POLICY own_or_house ON ledger.reversals
  USING (customer_id = ANY (nullif(current_setting('app.customer_ids', true), '')::bigint[]) OR customer_id = 0);
CREATE POLICY append_own_or_house ON ledger.audit FOR INSERT
  WITH CHECK (customer_id = ANY (nullif(current_setting('app.customer_ids', true), '')::bigint[]) OR customer_id = 0);

GRANT USAGE ON SCHEMA ledger TO ledger_switch;
GRANT SELECT, UPDATE (version) ON ledger.customers TO ledger_switch;
GRANT SELECT, UPDATE (balance_minor) ON ledger.accounts TO ledger_switch;
GRANT SELECT (card_id, customer_id, pan_masked, expiry_yymm, status, pin_data, pin_tries,
              currency, max_per_txn_minor, daily_amount_minor, daily_count, usage_day,
              usage_amount_minor, usage_count, pan_hash),
      UPDATE (status, pin_tries, usage_day, usage_amount_minor, usage_count)
  ON ledger.cards TO ledger_switch;
GRANT SELECT ON ledger.card_accounts TO ledger_switch;
GRANT SELECT, UPDATE (tmk, tpk, tak) ON ledger.terminals TO ledger_switch;
GRANT SELECT, INSERT ON ledger.journal_entries, ledger.postings, ledger.requests,
  ledger.reversals TO ledger_switch;
GRANT INSERT ON ledger.audit TO ledger_switch;
GRANT SELECT, INSERT, UPDATE ON ledger.audit_heads TO ledger_switch;
GRANT USAGE ON SEQUENCE ledger.entry_ids TO ledger_switch;
GRANT SELECT ON ledger.schema_migrations TO ledger_switch;
