-- Every function of the ledger, in one repeatable file: `migrate` re-applies it after the
-- versioned table migrations, so each function has exactly one definition to read.
--
-- The switch's role executes ledger.read_batch, ledger.post_batch, ledger.terminal_keys,
-- ledger.set_session_keys and ledger.schema_state, and nothing else: it owns no table privilege.
-- The functions derive the customer from the card's PAN hash themselves, build the postings from
-- the operation (never from the caller), refuse what the switch would never ask for, and write
-- the journal record and its audit block.

-- Functions are PL/pgSQL where they run per request: their plans are cached per session (a
-- SQL-language function that is not inlined is planned again at every call).

-- The per-item facts post_batch derives under lock, between its statements.
DROP TYPE IF EXISTS ledger.post_item CASCADE;
CREATE TYPE ledger.post_item AS (
  position integer,
  customer_id bigint,
  card_id bigint,
  -- 'write', 'answered' (its key is already in transactions) or 'stale' (decided on state that
  -- changed since its read: decide again)
  status text,
  transaction_id bigint,
  source_account_id bigint,
  destination_account_id bigint,
  move_minor bigint,
  card_update boolean,
  refusal text
);

-- One field of the canonical text a leaf hashes: "name=value", or "name" alone for NULL.
CREATE OR REPLACE FUNCTION ledger.leaf_field(name text, value text) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE WHEN value IS NULL THEN name ELSE name || '=' || value END
$$;

-- The SHA-256 leaf of one transaction: every column but the leaf itself, then its legs in
-- account order. ledger/journal.py computes the same bytes; docs/audit.md specifies them.
-- PL/pgSQL, not SQL: called with a row built in the query, a SQL function would not be inlined
-- and would be planned again at every call (milliseconds, measured); PL/pgSQL keeps its plan.
CREATE OR REPLACE FUNCTION ledger.leaf(t ledger.transactions, legs text) RETURNS bytea
  LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
  RETURN sha256(convert_to(concat_ws(E'\n',
    'kiosk-switch leaf v1',
    ledger.leaf_field('transaction_id', t.transaction_id::text),
    ledger.leaf_field('customer_id', t.customer_id::text),
    ledger.leaf_field('terminal_id', t.terminal_id),
    ledger.leaf_field('transmission_time', t.transmission_time),
    ledger.leaf_field('stan', t.stan),
    ledger.leaf_field('message_class', t.message_class),
    ledger.leaf_field('kind', t.kind),
    ledger.leaf_field('outcome', t.outcome),
    ledger.leaf_field('response_code', t.response_code),
    ledger.leaf_field('amount_minor', t.amount_minor::text),
    ledger.leaf_field('currency', t.currency),
    ledger.leaf_field('requested_minor', t.requested_minor::text),
    ledger.leaf_field('requested_currency', t.requested_currency),
    ledger.leaf_field('ledger_balance_minor', t.ledger_balance_minor::text),
    ledger.leaf_field('available_balance_minor', t.available_balance_minor::text),
    ledger.leaf_field('business_date', t.business_date::text),
    ledger.leaf_field('recorded_at_us',
                      (extract(epoch FROM t.recorded_at) * 1000000)::bigint::text),
    ledger.leaf_field('pan_masked', t.pan_masked),
    ledger.leaf_field('mti', t.mti),
    ledger.leaf_field('processing_code', t.processing_code),
    ledger.leaf_field('rrn', t.rrn),
    ledger.leaf_field('original_transmission_time', t.original_transmission_time),
    ledger.leaf_field('original_stan', t.original_stan),
    ledger.leaf_field('original_message_class', t.original_message_class),
    ledger.leaf_field('reversal_state', t.reversal_state),
    ledger.leaf_field('lane', t.lane::text),
    ledger.leaf_field('block_seq', t.block_seq::text),
    legs), 'UTF8'));
END $$;

-- The legs part of a leaf: "leg=account:customer:amount:currency" lines in account order.
CREATE OR REPLACE FUNCTION ledger.leg_line(account_id bigint, customer_id bigint,
                                           amount_minor bigint, currency text) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT format('leg=%s:%s:%s:%s', account_id, customer_id, amount_minor, currency)
$$;

-- The hash of a block: the previous block's hash, the block's place, then its leaves.
CREATE OR REPLACE FUNCTION ledger.block_hash(prev_hash bytea, lane integer, seq bigint,
                                             transactions integer, leaves bytea)
  RETURNS bytea LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT sha256(prev_hash || convert_to(
    format(E'kiosk-switch block v1\nlane=%s\nseq=%s\ntransactions=%s\n', lane, seq, transactions),
    'UTF8') || leaves)
$$;

-- Locks a free lane's head (the backend's own lane when it is free, else the next free one, so
-- concurrent calls rarely wait on one head) and returns the lane, the next block's number and
-- the hash it follows. Taken last in every writer, after customers and house accounts.
CREATE OR REPLACE FUNCTION ledger.open_block(OUT lane integer, OUT seq bigint,
                                             OUT prev_hash bytea)
  LANGUAGE plpgsql AS $$
DECLARE
  v_lanes integer := (SELECT count(*) FROM ledger.audit_heads);
  v_own integer := pg_backend_pid() % v_lanes;
BEGIN
  SELECT h.lane, h.seq + 1, h.hash INTO lane, seq, prev_hash FROM ledger.audit_heads h
   ORDER BY (h.lane + v_lanes - v_own) % v_lanes LIMIT 1 FOR UPDATE SKIP LOCKED;
  IF NOT FOUND THEN
    SELECT h.lane, h.seq + 1, h.hash INTO lane, seq, prev_hash FROM ledger.audit_heads h
     WHERE h.lane = v_own FOR UPDATE;
  END IF;
END $$;

-- Appends the block of `p_count` transactions written with (p_lane, p_seq), whose leaves in
-- transaction id order are `p_leaves`, and moves the head.
CREATE OR REPLACE FUNCTION ledger.close_block(p_lane integer, p_seq bigint, p_prev_hash bytea,
                                              p_at timestamptz, p_count integer, p_leaves bytea)
  RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_hash bytea;
BEGIN
  IF p_count = 0 THEN
    RETURN;
  END IF;
  v_hash := ledger.block_hash(p_prev_hash, p_lane, p_seq, p_count, p_leaves);
  INSERT INTO ledger.audit_blocks VALUES (p_lane, p_seq, p_at, p_count, p_prev_hash, v_hash);
  UPDATE ledger.audit_heads SET seq = p_seq, hash = v_hash WHERE lane = p_lane;
END $$;

-- What a repeat gets back, and what the store answers from: the stored outcome of one row.
CREATE OR REPLACE FUNCTION ledger.result_of(t ledger.transactions) RETURNS jsonb
  LANGUAGE plpgsql STABLE AS $$
BEGIN
  RETURN jsonb_build_object(
    'transaction_id', t.transaction_id, 'outcome', t.outcome, 'kind', t.kind,
    'amount_minor', t.amount_minor, 'currency', t.currency,
    'ledger_balance_minor', t.ledger_balance_minor,
    'available_balance_minor', t.available_balance_minor,
    'business_date', t.business_date);
END $$;

-- Everything a decision about one request needs, as of now: the card (found by its PAN hash,
-- which only the HSM can compute), its customer's accounts, the terminal, the request's stored
-- outcome if it was answered, its original (for a reversal) and the reversal marks on both keys.
-- `xmin` of the card and of each account lets post_batch tell whether the state a decision was
-- made on is still current. `admitted`: the customers post_batch would lock for it.
CREATE OR REPLACE FUNCTION ledger.state_of(
  p_pan_hash bytea, p_terminal_id text, p_transmission_time text, p_stan text,
  p_message_class text, p_original_transmission_time text, p_original_stan text,
  p_original_message_class text, p_to_account text
) RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
  v_card jsonb;
  v_card_id bigint;
  v_customer_id bigint := 0;
  v_terminal ledger.terminals;
  v_original ledger.transactions;
  v_answered ledger.transactions;
  v_to_owner bigint;
  v_cross boolean := (SELECT cross_customer_transfers FROM ledger.policy);
  v_legs jsonb;
  v_admitted bigint[] := '{}';
BEGIN
  SELECT to_jsonb(c) - 'pan_hash' || jsonb_build_object('xmin', c.xmin::text::bigint),
         c.card_id, c.customer_id
    INTO v_card, v_card_id, v_customer_id
    FROM ledger.cards c WHERE c.pan_hash = p_pan_hash;
  IF v_card_id IS NOT NULL THEN
    v_admitted := ARRAY[v_customer_id];
  ELSE
    v_customer_id := 0;
  END IF;
  SELECT t.* INTO v_terminal FROM ledger.terminals t WHERE t.terminal_id = p_terminal_id;
  SELECT t.* INTO v_answered FROM ledger.transactions t
   WHERE (t.customer_id, t.terminal_id, t.transmission_time, t.stan, t.message_class)
       = (v_customer_id, p_terminal_id, p_transmission_time, p_stan, p_message_class);
  IF p_original_stan IS NOT NULL AND v_customer_id <> 0 THEN
    SELECT t.* INTO v_original FROM ledger.transactions t
     WHERE (t.customer_id, t.terminal_id, t.transmission_time, t.stan, t.message_class)
         = (v_customer_id, p_terminal_id, p_original_transmission_time, p_original_stan,
            p_original_message_class);
    SELECT coalesce(jsonb_agg(jsonb_build_object(
             'account_id', p.account_id, 'customer_id', p.customer_id,
             'amount_minor', p.amount_minor, 'currency', p.currency) ORDER BY p.amount_minor), '[]')
      INTO v_legs FROM ledger.postings p WHERE p.transaction_id = v_original.transaction_id;
    v_admitted := v_admitted || ARRAY(
      SELECT DISTINCT (x->>'customer_id')::bigint FROM jsonb_array_elements(v_legs) x
       WHERE (x->>'customer_id')::bigint NOT IN (0, v_customer_id));
  END IF;
  IF p_to_account IS NOT NULL THEN
    v_to_owner := (SELECT customer_id FROM ledger.accounts WHERE account_number = p_to_account);
    IF v_cross AND v_customer_id <> 0 AND v_to_owner NOT IN (0, v_customer_id) THEN
      v_admitted := v_admitted || v_to_owner;
    END IF;
  END IF;
  RETURN jsonb_build_object(
    'customer_id', v_customer_id,
    'admitted', to_jsonb(ARRAY(SELECT DISTINCT unnest(v_admitted) ORDER BY 1)),
    'card', v_card,
    'links', (SELECT coalesce(jsonb_object_agg(ca.type_code, ca.account_id), '{}')
                FROM ledger.card_accounts ca WHERE ca.card_id = v_card_id),
    'accounts', (SELECT coalesce(jsonb_agg(to_jsonb(a) || jsonb_build_object(
                          'xmin', a.xmin::text::bigint) ORDER BY a.account_id), '[]')
                   FROM ledger.accounts a
                  WHERE a.account_id IN (
                          SELECT account_id FROM ledger.accounts
                           WHERE customer_id = v_customer_id AND v_customer_id <> 0
                          UNION ALL SELECT v_terminal.cash_account_id
                          UNION ALL SELECT account_id FROM ledger.accounts
                           WHERE account_number = p_to_account
                             AND customer_id = ANY (v_admitted)
                          UNION ALL SELECT (x->>'account_id')::bigint
                            FROM jsonb_array_elements(v_legs) x)),
    'to_account_owner', v_to_owner,
    'terminal', CASE WHEN v_terminal.terminal_id IS NOT NULL THEN jsonb_build_object(
                  'terminal_id', v_terminal.terminal_id, 'status', v_terminal.status,
                  'cash_account_id', v_terminal.cash_account_id) END,
    'answered', CASE WHEN v_answered.transaction_id IS NOT NULL
                     THEN ledger.result_of(v_answered) END,
    'original', CASE WHEN v_original.transaction_id IS NOT NULL THEN jsonb_build_object(
                  'outcome', v_original.outcome,
                  'result', ledger.result_of(v_original) || jsonb_build_object('postings', v_legs))
                END,
    'self_reversal', (SELECT reversal_state FROM ledger.transactions t
                       WHERE (t.customer_id, t.terminal_id, t.original_transmission_time,
                              t.original_stan, t.original_message_class)
                           = (v_customer_id, p_terminal_id, p_transmission_time, p_stan,
                              p_message_class)
                         AND t.reversal_state IS NOT NULL),
    'original_reversal', (SELECT reversal_state FROM ledger.transactions t
                           WHERE p_original_stan IS NOT NULL
                             AND (t.customer_id, t.terminal_id, t.original_transmission_time,
                                  t.original_stan, t.original_message_class)
                               = (v_customer_id, p_terminal_id, p_original_transmission_time,
                                  p_original_stan, p_original_message_class)
                             AND t.reversal_state IS NOT NULL));
END $$;

-- The reads of a batch of requests, in their order: one round trip and no locks.
CREATE OR REPLACE FUNCTION ledger.read_batch(
  pan_hashes bytea[], terminal_ids text[], transmission_times text[], stans text[],
  message_classes text[], original_transmission_times text[], original_stans text[],
  original_message_classes text[], to_accounts text[]
) RETURNS SETOF jsonb
  LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
BEGIN
  RETURN QUERY
    SELECT ledger.state_of(i.pan_hash, i.terminal_id, i.transmission_time, i.stan,
                           i.message_class, i.original_transmission_time, i.original_stan,
                           i.original_message_class, i.to_account)
      FROM unnest(pan_hashes, terminal_ids, transmission_times, stans, message_classes,
                  original_transmission_times, original_stans, original_message_classes,
                  to_accounts) WITH ORDINALITY
           AS i(pan_hash, terminal_id, transmission_time, stan, message_class,
                original_transmission_time, original_stan, original_message_class, to_account,
                position)
     ORDER BY i.position;
END $$;

-- A card's counters after a request, derived from its row as it is now: a wrong PIN counts
-- (blocking the card at the limit), an approval resets the count, a withdrawal adds to the
-- day's usage and the reversal of one gives its amount back. card_update is false when the
-- request leaves the card as it is.
CREATE OR REPLACE FUNCTION ledger.card_after(
  c ledger.cards, p_kind text, p_outcome text, p_business_date date, p_move_minor bigint,
  o ledger.transactions, p_pin_tries_max integer,
  OUT card_update boolean, OUT pin_tries integer, OUT status text, OUT usage_day date,
  OUT usage_amount_minor bigint, OUT usage_count integer
) LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  card_update := c.card_id IS NOT NULL;
  pin_tries := c.pin_tries;
  status := c.status;
  usage_day := c.usage_day;
  usage_amount_minor := c.usage_amount_minor;
  usage_count := c.usage_count;
  IF NOT card_update THEN
    RETURN;
  ELSIF p_kind = 'pin' AND p_outcome IN ('incorrect_pin', 'pin_tries_exceeded') THEN
    pin_tries := least(c.pin_tries + 1, p_pin_tries_max);
    IF pin_tries >= p_pin_tries_max THEN
      status := 'blocked';
    END IF;
  ELSIF p_outcome = 'approved' AND p_kind = 'withdrawal' THEN
    pin_tries := 0;
    usage_day := p_business_date;
    IF c.usage_day IS DISTINCT FROM p_business_date THEN
      usage_amount_minor := 0;
      usage_count := 0;
    END IF;
    usage_amount_minor := usage_amount_minor + p_move_minor;
    usage_count := usage_count + 1;
  ELSIF p_outcome = 'approved' AND p_kind IN ('inquiry', 'transfer') AND c.pin_tries > 0 THEN
    pin_tries := 0;
  ELSIF p_outcome = 'approved' AND p_kind = 'reversal' AND p_move_minor > 0
        AND o.kind = 'withdrawal' AND c.usage_day = o.business_date THEN
    usage_amount_minor := greatest(0, c.usage_amount_minor - p_move_minor);
  ELSE
    card_update := false;
  END IF;
END $$;

-- Why the ledger refuses a decided request, or NULL: the decision is not one the rules allow.
-- The switch never sends such a request; a caller that does is not the switch.
CREATE OR REPLACE FUNCTION ledger.refusal(
  p_kind text, p_outcome text, p_amount_minor bigint, p_currency text, p_reversal_state text,
  p_business_date date, c ledger.cards, term ledger.terminals, o ledger.transactions,
  src ledger.accounts, dst ledger.accounts, p_move_minor bigint, policy ledger.policy,
  p_card_update boolean, p_pin_tries integer, p_status text, p_usage_day date,
  p_usage_amount_minor bigint, p_usage_count integer, p_sent_update boolean,
  p_sent_pin_tries integer, p_sent_status text, p_sent_usage_day date,
  p_sent_usage_amount_minor bigint, p_sent_usage_count integer
) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF p_sent_update IS DISTINCT FROM p_card_update OR (p_card_update AND
     (p_sent_pin_tries, p_sent_status, p_sent_usage_day, p_sent_usage_amount_minor,
      p_sent_usage_count) IS DISTINCT FROM
     (p_pin_tries, p_status, p_usage_day, p_usage_amount_minor, p_usage_count)) THEN
    RETURN 'card counters differ from what the request allows';
  ELSIF p_outcome = 'approved' AND p_kind IN ('pin', 'decline') THEN
    RETURN format('a %s record cannot be an approval', p_kind);
  ELSIF p_reversal_state IS NOT NULL AND p_kind <> 'reversal' THEN
    RETURN 'only a reversal marks an original';
  ELSIF p_amount_minor IS DISTINCT FROM p_move_minor THEN
    RETURN 'the amount differs from the money the operation moves';
  ELSIF p_move_minor = 0 THEN
    RETURN NULL;
  ELSIF src.account_id IS NULL OR dst.account_id IS NULL THEN
    RETURN format('no accounts for this %s', p_kind);
  ELSIF src.currency <> p_currency OR dst.currency <> p_currency THEN
    RETURN 'currency differs from the accounts''';
  ELSIF src.account_id = dst.account_id THEN
    RETURN 'source and destination are one account';
  ELSIF p_kind IN ('withdrawal', 'transfer') AND (c.status <> 'active'
        OR c.pin_tries >= policy.pin_tries_max OR c.currency <> p_currency) THEN
    RETURN 'this card may not move money';
  ELSIF p_kind = 'withdrawal' AND (term.terminal_id IS NULL OR term.status <> 'active') THEN
    RETURN 'this terminal may not dispense';
  ELSIF p_kind = 'withdrawal' AND (p_move_minor > c.max_per_txn_minor
        OR p_usage_amount_minor > c.daily_amount_minor OR p_usage_count > c.daily_count) THEN
    RETURN 'over the card''s limits';
  ELSIF p_kind = 'transfer' AND (dst.customer_id = 0 OR (dst.customer_id <> c.customer_id
        AND NOT policy.cross_customer_transfers)) THEN
    RETURN 'the destination is not one this card may pay into';
  ELSIF p_kind = 'reversal' AND (o.transaction_id IS NULL OR o.outcome <> 'approved'
        OR o.kind NOT IN ('withdrawal', 'transfer') OR p_move_minor > o.amount_minor
        OR (p_move_minor < o.amount_minor AND o.kind <> 'withdrawal')
        OR p_reversal_state IS DISTINCT FROM 'applied') THEN
    RETURN 'not a reversal of this card''s original';
  END IF;
  RETURN NULL;
END $$;

-- The writes of a batch of decided requests: one round trip, one transaction, no subtransaction.
-- Each array holds one element per request, in the same order. The switch decides each request
-- on the state read_batch returned and says what it decided; this function, under lock:
--   * answers 'answered' for a request key already written (a repeat), with its stored outcome;
--   * answers 'stale' with the current state when the card, the account the decision checked or
--     a reversal mark changed since that read: the switch decides again;
--   * otherwise derives the customer from the card, the postings from the operation and the
--     card's new counters from its current row, refuses the whole batch when the decision is
--     not one the rules allow (an approved withdrawal over a limit, money to an account the
--     card may not reach, a counter reset without a verified PIN), and writes the transaction,
--     its postings, the balances, the card and one audit block.
-- A genuine error (or a refusal) aborts the batch: the store sends its requests again one per
-- call, so one bad request never fails the others.
-- The caller's batch never holds two requests of one customer (the store guarantees it), so
-- every row is updated at most once per statement.
CREATE OR REPLACE FUNCTION ledger.post_batch(
  pan_hashes bytea[], terminal_ids text[], transmission_times text[], stans text[],
  message_classes text[], kinds text[], outcomes text[], response_codes text[],
  amounts_minor bigint[], currencies text[], requested_minor bigint[],
  requested_currencies text[], from_types text[], to_types text[], to_accounts text[],
  original_transmission_times text[], original_stans text[], original_message_classes text[],
  reversal_states text[], ledger_balances_minor bigint[], available_balances_minor bigint[],
  business_dates date[], recorded_ats timestamptz[], pans_masked text[], mtis text[],
  processing_codes text[], rrns text[], card_xmins bigint[], checked_account_ids bigint[],
  checked_account_xmins bigint[], card_updates boolean[], card_statuses text[],
  card_pin_tries integer[], card_usage_days date[], card_usage_amounts_minor bigint[],
  card_usage_counts integer[], atcs integer[]
) RETURNS TABLE (item integer, status text, result jsonb, state jsonb)
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
#variable_conflict use_column
DECLARE
  v_policy ledger.policy;
  v_lock_ids bigint[];
  v_items ledger.post_item[];
  v_refusal text;
  v_lane integer;
  v_seq bigint;
  v_prev_hash bytea;
  v_count integer;
  v_leaves bytea;
BEGIN
  SELECT * INTO v_policy FROM ledger.policy;
  -- Locks in one global order, so concurrent batches never deadlock: customers by id, then the
  -- house accounts that move (terminal cash) by id, then the lane's head.
  v_lock_ids := ARRAY(
    SELECT DISTINCT ids.customer_id FROM (
      SELECT c.customer_id FROM unnest(pan_hashes) h JOIN ledger.cards c ON c.pan_hash = h
      UNION ALL
      SELECT a.customer_id FROM unnest(to_accounts) n
        JOIN ledger.accounts a ON a.account_number = n
       WHERE v_policy.cross_customer_transfers
      UNION ALL
      SELECT p.customer_id
        FROM unnest(pan_hashes, terminal_ids, original_transmission_times, original_stans,
                    original_message_classes) AS i(pan_hash, terminal_id, tt, stan, mc)
        JOIN ledger.cards c ON c.pan_hash = i.pan_hash
        JOIN ledger.transactions o
          ON (o.customer_id, o.terminal_id, o.transmission_time, o.stan, o.message_class)
           = (c.customer_id, i.terminal_id, i.tt, i.stan, i.mc)
        JOIN ledger.postings p ON p.transaction_id = o.transaction_id
    ) ids WHERE ids.customer_id <> 0 ORDER BY 1);
  PERFORM 1 FROM ledger.customers WHERE customer_id = ANY (v_lock_ids)
    ORDER BY customer_id FOR UPDATE;
  PERFORM 1 FROM ledger.accounts WHERE account_id = ANY (ARRAY(
      SELECT t.cash_account_id
        FROM unnest(terminal_ids, kinds, outcomes) AS i(terminal_id, kind, outcome)
        JOIN ledger.terminals t ON t.terminal_id = i.terminal_id
       WHERE i.outcome = 'approved' AND i.kind IN ('withdrawal', 'reversal')))
    ORDER BY account_id FOR UPDATE;
  SELECT b.lane, b.seq, b.prev_hash INTO v_lane, v_seq, v_prev_hash FROM ledger.open_block() b;

  -- Each request judged on the rows as they are now, under the locks.
  SELECT array_agg(ROW(
      i.position, coalesce(c.customer_id, 0), c.card_id, judged.status,
      CASE WHEN judged.status = 'write' THEN nextval('ledger.transaction_ids') END,
      legs.source_account_id, legs.destination_account_id, legs.move_minor, expect.card_update,
      CASE WHEN judged.status = 'write' THEN ledger.refusal(
        i.kind, i.outcome, i.amount_minor, i.currency, i.reversal_state, i.business_date,
        c, term, o, src, dst, legs.move_minor, v_policy, expect.card_update,
        expect.pin_tries, expect.status, expect.usage_day, expect.usage_amount_minor,
        expect.usage_count, i.card_update, i.card_pin_tries, i.card_status, i.card_usage_day,
        i.card_usage_amount_minor, i.card_usage_count) END
    )::ledger.post_item ORDER BY i.position) INTO v_items
    FROM unnest(pan_hashes, terminal_ids, transmission_times, stans, message_classes, kinds,
                outcomes, amounts_minor, currencies, from_types, to_types, to_accounts,
                original_transmission_times, original_stans, original_message_classes,
                reversal_states, business_dates, card_xmins, checked_account_ids,
                checked_account_xmins, card_updates, card_statuses, card_pin_tries,
                card_usage_days, card_usage_amounts_minor, card_usage_counts) WITH ORDINALITY
         AS i(pan_hash, terminal_id, transmission_time, stan, message_class, kind, outcome,
              amount_minor, currency, from_type, to_type, to_account, original_transmission_time,
              original_stan, original_message_class, reversal_state, business_date, card_xmin,
              checked_account_id, checked_account_xmin, card_update, card_status,
              card_pin_tries, card_usage_day, card_usage_amount_minor, card_usage_count,
              position)
    LEFT JOIN ledger.cards c ON c.pan_hash = i.pan_hash
    LEFT JOIN ledger.terminals term ON term.terminal_id = i.terminal_id
    LEFT JOIN ledger.accounts checked ON checked.account_id = i.checked_account_id
    LEFT JOIN ledger.transactions o
      ON i.original_stan IS NOT NULL
     AND (o.customer_id, o.terminal_id, o.transmission_time, o.stan, o.message_class)
       = (c.customer_id, i.terminal_id, i.original_transmission_time, i.original_stan,
          i.original_message_class)
    CROSS JOIN LATERAL (SELECT
      EXISTS (SELECT 1 FROM ledger.transactions t
               WHERE (t.customer_id, t.terminal_id, t.transmission_time, t.stan,
                      t.message_class)
                   = (coalesce(c.customer_id, 0), i.terminal_id, i.transmission_time, i.stan,
                      i.message_class)) AS answered,
      EXISTS (SELECT 1 FROM ledger.transactions t
               WHERE (t.customer_id, t.terminal_id, t.original_transmission_time,
                      t.original_stan, t.original_message_class)
                   = (c.customer_id, i.terminal_id, i.transmission_time, i.stan,
                      i.message_class)
                 AND t.reversal_state IS NOT NULL) AS self_marked,
      EXISTS (SELECT 1 FROM ledger.transactions t
               WHERE i.original_stan IS NOT NULL
                 AND (t.customer_id, t.terminal_id, t.original_transmission_time,
                      t.original_stan, t.original_message_class)
                   = (c.customer_id, i.terminal_id, i.original_transmission_time,
                      i.original_stan, i.original_message_class)
                 AND t.reversal_state IS NOT NULL) AS original_marked) marks
    CROSS JOIN LATERAL (SELECT CASE
      WHEN marks.answered THEN 'answered'
      WHEN c.xmin::text::bigint IS DISTINCT FROM i.card_xmin
        OR checked.xmin::text::bigint IS DISTINCT FROM i.checked_account_xmin
        OR (i.reversal_state IS NOT NULL AND marks.original_marked)
        OR (i.reversal_state = 'applied' AND o.transaction_id IS NULL)
        OR (i.reversal_state = 'pending' AND o.transaction_id IS NOT NULL)
        OR (i.outcome = 'approved' AND i.kind IN ('withdrawal', 'transfer') AND marks.self_marked)
        THEN 'stale'
      ELSE 'write' END AS status) judged
    -- The accounts money moves between, from the operation: never from the caller.
    CROSS JOIN LATERAL (SELECT
      CASE WHEN i.kind IN ('withdrawal', 'transfer')
           THEN (SELECT account_id FROM ledger.card_accounts
                  WHERE card_id = c.card_id AND type_code = i.from_type)
           ELSE (SELECT account_id FROM ledger.postings
                  WHERE transaction_id = o.transaction_id AND amount_minor > 0) END
        AS source_account_id,
      CASE WHEN i.kind = 'withdrawal' THEN term.cash_account_id
           WHEN i.kind = 'transfer' AND i.to_type IS NOT NULL
           THEN (SELECT account_id FROM ledger.card_accounts
                  WHERE card_id = c.card_id AND type_code = i.to_type)
           WHEN i.kind = 'transfer'
           THEN (SELECT account_id FROM ledger.accounts WHERE account_number = i.to_account)
           ELSE (SELECT account_id FROM ledger.postings
                  WHERE transaction_id = o.transaction_id AND amount_minor < 0) END
        AS destination_account_id,
      CASE WHEN i.outcome = 'approved' AND i.kind IN ('withdrawal', 'transfer', 'reversal')
           THEN i.amount_minor ELSE 0 END AS move_minor) legs
    LEFT JOIN ledger.accounts src
      ON src.account_id = legs.source_account_id AND legs.move_minor > 0
    LEFT JOIN ledger.accounts dst
      ON dst.account_id = legs.destination_account_id AND legs.move_minor > 0
    -- The card's counters after this request, derived from its row as it is now.
    CROSS JOIN LATERAL ledger.card_after(
      c, i.kind, i.outcome, i.business_date, legs.move_minor, o, v_policy.pin_tries_max) expect;

  SELECT v.refusal INTO v_refusal FROM unnest(v_items) v WHERE v.refusal IS NOT NULL LIMIT 1;
  IF v_refusal IS NOT NULL THEN
    RAISE EXCEPTION 'refused: %', v_refusal USING ERRCODE = 'insufficient_privilege';
  END IF;

  -- EMV (0002_emv): a chip request's ATC, from a cryptogram the HSM verified, must be above the
  -- last its card used. Checked here under the customer's lock and moved forward below, in the
  -- transaction that writes the request, so two requests with one ATC never both succeed. The
  -- switch declines a replay itself; one that reaches this point was decided on the card's row
  -- as it still is (else its status is 'stale'), so it is a decision the rules do not allow.
  IF EXISTS (SELECT 1 FROM unnest(v_items) v
               JOIN unnest(atcs) WITH ORDINALITY AS e(atc, position) ON e.position = v.position
               JOIN ledger.cards c ON c.card_id = v.card_id
              WHERE v.status = 'write' AND e.atc IS NOT NULL
                AND (c.emv_imk_ac IS NULL OR c.emv_last_atc >= e.atc)) THEN
    RAISE EXCEPTION 'refused: an ATC not above the card''s last, or for a card with no EMV profile'
      USING ERRCODE = 'insufficient_privilege';
  END IF;

  WITH w AS (
    SELECT v.*, i.* FROM unnest(v_items) v
      JOIN unnest(terminal_ids, transmission_times, stans, message_classes, kinds, outcomes,
                  response_codes, amounts_minor, currencies, requested_minor,
                  requested_currencies, original_transmission_times, original_stans,
                  original_message_classes, reversal_states, ledger_balances_minor,
                  available_balances_minor, business_dates, recorded_ats, pans_masked, mtis,
                  processing_codes, rrns, card_statuses, card_pin_tries, card_usage_days,
                  card_usage_amounts_minor, card_usage_counts) WITH ORDINALITY
           AS i(terminal_id, transmission_time, stan, message_class, kind, outcome,
                response_code, amount_minor, currency, requested_minor, requested_currency,
                original_transmission_time, original_stan, original_message_class,
                reversal_state, ledger_balance_minor, available_balance_minor, business_date,
                recorded_at, pan_masked, mti, processing_code, rrn, card_status, card_pin_tries,
                card_usage_day, card_usage_amount_minor, card_usage_count, item_position)
        ON i.item_position = v.position
     WHERE v.status = 'write'),
  legs AS (
    SELECT w.transaction_id, a.account_id, a.customer_id, x.amount_minor, a.currency
      FROM w CROSS JOIN LATERAL (VALUES (w.source_account_id, -w.move_minor),
                                        (w.destination_account_id, w.move_minor))
                                AS x(account_id, amount_minor)
      JOIN ledger.accounts a ON a.account_id = x.account_id
     WHERE w.move_minor > 0),
  written AS (
    SELECT ROW(w.transaction_id, w.customer_id, w.terminal_id, w.transmission_time, w.stan,
               w.message_class, w.kind, w.outcome, w.response_code, w.move_minor,
               w.currency, w.requested_minor, w.requested_currency, w.ledger_balance_minor,
               w.available_balance_minor, w.business_date, w.recorded_at,
               coalesce((SELECT pan_masked FROM ledger.cards WHERE card_id = w.card_id),
                        w.pan_masked),
               w.mti, w.processing_code, w.rrn, w.original_transmission_time, w.original_stan,
               w.original_message_class, w.reversal_state, v_lane, v_seq,
               '\x'::bytea)::ledger.transactions AS t,
           (SELECT string_agg(ledger.leg_line(l.account_id, l.customer_id, l.amount_minor,
                                              l.currency), E'\n' ORDER BY l.account_id)
              FROM legs l WHERE l.transaction_id = w.transaction_id) AS leg_lines
      FROM w),
  inserted AS (
    INSERT INTO ledger.transactions
      SELECT (t).transaction_id, (t).customer_id, (t).terminal_id, (t).transmission_time,
             (t).stan, (t).message_class, (t).kind, (t).outcome, (t).response_code,
             (t).amount_minor, (t).currency, (t).requested_minor, (t).requested_currency,
             (t).ledger_balance_minor, (t).available_balance_minor, (t).business_date,
             (t).recorded_at, (t).pan_masked, (t).mti, (t).processing_code, (t).rrn,
             (t).original_transmission_time, (t).original_stan, (t).original_message_class,
             (t).reversal_state, (t).lane, (t).block_seq, ledger.leaf(t, leg_lines)
        FROM written
    RETURNING transaction_id, leaf),
  posted AS (
    INSERT INTO ledger.postings SELECT * FROM legs),
  balances AS (
    UPDATE ledger.accounts a SET balance_minor = a.balance_minor + moved.delta_minor
      FROM (SELECT account_id, sum(amount_minor) AS delta_minor FROM legs GROUP BY account_id)
           AS moved
     WHERE a.account_id = moved.account_id),
  counters AS (
    UPDATE ledger.cards c SET status = w.card_status, pin_tries = w.card_pin_tries,
        usage_day = w.card_usage_day, usage_amount_minor = w.card_usage_amount_minor,
        usage_count = w.card_usage_count
      FROM w WHERE c.card_id = w.card_id AND w.card_update)
  SELECT count(*), string_agg(leaf, ''::bytea ORDER BY transaction_id) INTO v_count, v_leaves
    FROM inserted;
  PERFORM ledger.close_block(v_lane, v_seq, v_prev_hash, now(), v_count, v_leaves);
  -- EMV (0002_emv): each written chip request moves its card's last ATC to its own (checked
  -- above). A statement of its own: the counters above may have updated the same row.
  UPDATE ledger.cards c SET emv_last_atc = e.atc
    FROM unnest(v_items) v
    JOIN unnest(atcs) WITH ORDINALITY AS e(atc, position) ON e.position = v.position
   WHERE c.card_id = v.card_id AND v.status = 'write' AND e.atc IS NOT NULL;

  RETURN QUERY
    SELECT v.position, v.status,
           CASE v.status
             WHEN 'write' THEN jsonb_build_object('transaction_id', v.transaction_id)
             WHEN 'answered' THEN (
               SELECT ledger.result_of(t) FROM ledger.transactions t
                WHERE (t.customer_id, t.terminal_id, t.transmission_time, t.stan,
                       t.message_class)
                    = (v.customer_id, i.terminal_id, i.transmission_time, i.stan,
                       i.message_class)) END,
           CASE WHEN v.status = 'stale' THEN ledger.state_of(
             i.pan_hash, i.terminal_id, i.transmission_time, i.stan, i.message_class,
             i.original_transmission_time, i.original_stan, i.original_message_class,
             i.to_account) END
      FROM unnest(v_items) v
      JOIN unnest(pan_hashes, terminal_ids, transmission_times, stans, message_classes,
                  original_transmission_times, original_stans, original_message_classes,
                  to_accounts) WITH ORDINALITY
           AS i(pan_hash, terminal_id, transmission_time, stan, message_class,
                original_transmission_time, original_stan, original_message_class, to_account,
                position)
        ON i.position = v.position
     ORDER BY v.position;
END $$;

-- An account's opening balance, posted against the house funding account of its currency and
-- journalled like any transaction (provisioning, as the owner).
CREATE OR REPLACE FUNCTION ledger.post_opening(p_account_id bigint, p_amount_minor bigint,
                                               p_at timestamptz) RETURNS bigint
  LANGUAGE plpgsql AS $$
DECLARE
  v_account ledger.accounts;
  v_funding_id bigint;
  v_lane integer;
  v_seq bigint;
  v_prev_hash bytea;
  v_row ledger.transactions;
  v_id bigint := nextval('ledger.transaction_ids');
BEGIN
  ASSERT p_amount_minor <> 0, 'an opening balance is not zero';
  SELECT * INTO STRICT v_account FROM ledger.accounts WHERE account_id = p_account_id;
  INSERT INTO ledger.accounts (customer_id, account_number, type_code, currency)
    VALUES (0, 'FUNDING-' || v_account.currency, 'funding', v_account.currency)
    ON CONFLICT (account_number) DO UPDATE SET currency = EXCLUDED.currency
    RETURNING account_id INTO v_funding_id;
  PERFORM 1 FROM ledger.accounts WHERE account_id IN (p_account_id, v_funding_id)
    ORDER BY account_id FOR UPDATE;
  SELECT b.lane, b.seq, b.prev_hash INTO v_lane, v_seq, v_prev_hash FROM ledger.open_block() b;
  v_row := ROW(v_id, v_account.customer_id, '', to_char(p_at AT TIME ZONE 'UTC', 'MMDDHH24MISS'),
               v_id::text, 'opening', 'opening', 'approved', '00', abs(p_amount_minor),
               v_account.currency, abs(p_amount_minor), v_account.currency, NULL, NULL,
               (p_at AT TIME ZONE 'UTC')::date, p_at, '', '', '', '', NULL, NULL, NULL, NULL,
               v_lane, v_seq, '\x'::bytea)::ledger.transactions;
  v_row.leaf := ledger.leaf(v_row, (
    SELECT string_agg(ledger.leg_line(a.account_id, a.customer_id, x.amount_minor, a.currency),
                      E'\n' ORDER BY a.account_id)
      FROM (VALUES (p_account_id, p_amount_minor), (v_funding_id, -p_amount_minor))
           AS x(account_id, amount_minor)
      JOIN ledger.accounts a USING (account_id)));
  INSERT INTO ledger.transactions SELECT (v_row).*;
  INSERT INTO ledger.postings
    SELECT v_id, a.account_id, a.customer_id, x.amount_minor, a.currency
      FROM (VALUES (p_account_id, p_amount_minor), (v_funding_id, -p_amount_minor))
           AS x(account_id, amount_minor)
      JOIN ledger.accounts a USING (account_id);
  UPDATE ledger.accounts SET balance_minor = balance_minor + CASE account_id
      WHEN p_account_id THEN p_amount_minor ELSE -p_amount_minor END
   WHERE account_id IN (p_account_id, v_funding_id);
  PERFORM ledger.close_block(v_lane, v_seq, v_prev_hash, now(), 1, v_row.leaf);
  RETURN v_id;
END $$;

-- A terminal's status and key cryptograms (under the LMK), read when it signs on.
CREATE OR REPLACE FUNCTION ledger.terminal_keys(p_terminal_id text)
  RETURNS TABLE (terminal_id text, status text, tmk text, bdk text, tpk text, tak text)
  LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
BEGIN
  RETURN QUERY SELECT t.terminal_id, t.status, t.tmk, t.bdk, t.tpk, t.tak
                 FROM ledger.terminals t WHERE t.terminal_id = p_terminal_id;
END $$;

-- New session keys after a key change. Only the session keys: a terminal's master key and base
-- derivation key are set by provisioning, never by the switch.
CREATE OR REPLACE FUNCTION ledger.set_session_keys(p_terminal_id text, p_tpk text, p_tak text)
  RETURNS boolean
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
BEGIN
  UPDATE ledger.terminals SET tpk = p_tpk, tak = p_tak WHERE terminal_id = p_terminal_id;
  RETURN FOUND;
END $$;

-- The applied migration and the functions file's digest, so a switch refuses a schema older
-- than its code.
CREATE OR REPLACE FUNCTION ledger.schema_state(OUT version integer, OUT functions_sha256 text)
  LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
BEGIN
  SELECT coalesce(max(m.version), 0) INTO version FROM ledger.schema_migrations m;
  SELECT f.sha256 INTO functions_sha256 FROM ledger.schema_functions f;
END $$;

-- The rules the database enforces, so the switch can refuse to start with others.
CREATE OR REPLACE FUNCTION ledger.current_policy(OUT pin_tries_max integer,
                                                 OUT cross_customer_transfers boolean)
  LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
BEGIN
  SELECT p.pin_tries_max, p.cross_customer_transfers INTO pin_tries_max, cross_customer_transfers
    FROM ledger.policy p;
END $$;

-- The switch executes these six and nothing else. Functions are executable by PUBLIC unless
-- revoked: the internal ones (decisions, hashing, blocks) are the owner's only.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA ledger FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
  ledger.read_batch(bytea[], text[], text[], text[], text[], text[], text[], text[], text[]),
  ledger.post_batch(bytea[], text[], text[], text[], text[], text[], text[], text[], bigint[],
                    text[], bigint[], text[], text[], text[], text[], text[], text[], text[],
                    text[], bigint[], bigint[], date[], timestamptz[], text[], text[], text[],
                    text[], bigint[], bigint[], bigint[], boolean[], text[], integer[], date[],
                    bigint[], integer[], integer[]),
  ledger.terminal_keys(text),
  ledger.set_session_keys(text, text, text),
  ledger.schema_state(),
  ledger.current_policy()
  TO ledger_switch;

-- EMV (0002_emv): a post_batch without the atcs array has no ATC check; none may be left in a
-- database migrated before, for anyone to call.
DROP FUNCTION IF EXISTS ledger.post_batch(
  bytea[], text[], text[], text[], text[], text[], text[], text[], bigint[], text[], bigint[],
  text[], text[], text[], text[], text[], text[], text[], text[], bigint[], bigint[], date[],
  timestamptz[], text[], text[], text[], text[], bigint[], bigint[], bigint[], boolean[], text[],
  integer[], date[], bigint[], integer[]);
