-- Every function of the ledger, in one repeatable file: `migrate` re-applies it after the
-- versioned table migrations, so each function has exactly one definition to read.
--
-- The switch's role executes ledger.read_batch, ledger.post_batch, ledger.terminal_keys,
-- ledger.set_session_keys and ledger.schema_state (and the operations functions at the end of
-- this file), and nothing else: it owns no table privilege.
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

-- The hash of a block: the previous block's hash, the block's place and time, then its leaves.
CREATE OR REPLACE FUNCTION ledger.block_hash(prev_hash bytea, lane integer, seq bigint,
                                             transactions integer, recorded_at timestamptz,
                                             leaves bytea)
  RETURNS bytea LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
  RETURN sha256(prev_hash || convert_to(format(
    E'kiosk-switch block v1\nlane=%s\nseq=%s\ntransactions=%s\nrecorded_at_us=%s\n',
    lane, seq, transactions, (extract(epoch FROM recorded_at) * 1000000)::bigint), 'UTF8')
    || leaves);
END $$;

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
  v_hash := ledger.block_hash(p_prev_hash, p_lane, p_seq, p_count, p_at, p_leaves);
  INSERT INTO ledger.audit_blocks VALUES (p_lane, p_seq, p_at, p_count, p_prev_hash, v_hash);
  UPDATE ledger.audit_heads SET seq = p_seq, hash = v_hash WHERE lane = p_lane;
END $$;

-- What a repeat gets back, and what the store answers from: the stored outcome of one row, with
-- the notes it moved (0004_cash), so a repeated approval names the mix that was dispensed.
CREATE OR REPLACE FUNCTION ledger.result_of(t ledger.transactions) RETURNS jsonb
  LANGUAGE plpgsql STABLE AS $$
BEGIN
  RETURN jsonb_build_object(
    'transaction_id', t.transaction_id, 'outcome', t.outcome, 'kind', t.kind,
    'amount_minor', t.amount_minor, 'currency', t.currency,
    'ledger_balance_minor', t.ledger_balance_minor,
    'available_balance_minor', t.available_balance_minor,
    'business_date', t.business_date, 'notes', ledger.notes_of(t.transaction_id));
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
                  'cash_account_id', v_terminal.cash_account_id,
                  'cassettes', ledger.cassettes_of(v_terminal.terminal_id)) END,
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

-- Whether `p_token` is the HSM's word for `p_lines` (hsm/authorisation.py): HMAC-SHA256, from
-- the key's two pads, over the lines joined by newlines, truncated to 16 bytes.
CREATE OR REPLACE FUNCTION ledger.word_valid(
  p_key ledger.authorisation_key, p_token bytea, p_lines text[]
) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  RETURN p_token IS NOT NULL AND p_key.inner_pad IS NOT NULL AND p_token = substring(
    sha256(p_key.outer_pad || sha256(p_key.inner_pad
      || convert_to(array_to_string(p_lines, E'\n'), 'UTF8')))
    FROM 1 FOR 16);
END $$;

-- Whether `p_token` is the HSM's word for this request: a PIN it verified (p_atc NULL), or a
-- chip cryptogram it verified at that ATC.
CREATE OR REPLACE FUNCTION ledger.authorisation_valid(
  p_key ledger.authorisation_key, p_token bytea, p_terminal_id text, p_transmission_time text,
  p_stan text, p_message_class text, p_pan_hash bytea, p_amount_minor bigint, p_currency text,
  p_atc integer
) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  RETURN ledger.word_valid(p_key, p_token, ARRAY[
    CASE WHEN p_atc IS NULL THEN 'kiosk-switch authorisation v1'
         ELSE 'kiosk-switch chip authorisation v1' END,
    p_terminal_id, p_transmission_time, p_stan, p_message_class, encode(p_pan_hash, 'hex'),
    p_amount_minor::text, p_currency, p_atc::text]);
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
  p_sent_usage_amount_minor bigint, p_sent_usage_count integer, p_authorised boolean
) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF p_outcome = 'approved' AND p_kind IN ('withdrawal', 'transfer', 'inquiry')
     AND NOT p_authorised THEN
    RETURN 'no valid word from the HSM (a PIN it verified) for this request';
  ELSIF p_sent_update IS DISTINCT FROM p_card_update OR (p_card_update AND
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
  card_usage_counts integer[], atcs integer[], authorisations bytea[],
  chip_authorisations bytea[], note_counts integer[]
) RETURNS TABLE (item integer, status text, result jsonb, state jsonb)
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
#variable_conflict use_column
DECLARE
  v_policy ledger.policy;
  v_key ledger.authorisation_key;
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
  SELECT * INTO v_key FROM ledger.authorisation_key;
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
        i.card_usage_amount_minor, i.card_usage_count,
        ledger.authorisation_valid(v_key, i.authorisation, i.terminal_id, i.transmission_time,
                                   i.stan, i.message_class, i.pan_hash, i.requested_minor,
                                   i.requested_currency, NULL)) END
    )::ledger.post_item ORDER BY i.position) INTO v_items
    FROM unnest(pan_hashes, terminal_ids, transmission_times, stans, message_classes, kinds,
                outcomes, amounts_minor, currencies, from_types, to_types, to_accounts,
                original_transmission_times, original_stans, original_message_classes,
                reversal_states, business_dates, card_xmins, checked_account_ids,
                checked_account_xmins, card_updates, card_statuses, card_pin_tries,
                card_usage_days, card_usage_amounts_minor, card_usage_counts, requested_minor,
                requested_currencies, authorisations) WITH ORDINALITY
         AS i(pan_hash, terminal_id, transmission_time, stan, message_class, kind, outcome,
              amount_minor, currency, from_type, to_type, to_account, original_transmission_time,
              original_stan, original_message_class, reversal_state, business_date, card_xmin,
              checked_account_id, checked_account_xmin, card_update, card_status,
              card_pin_tries, card_usage_day, card_usage_amount_minor, card_usage_count,
              requested_minor, requested_currency, authorisation, position)
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

  -- EMV (0003_emv): a chip request's ATC must come with the HSM's word for it (a cryptogram it
  -- verified at that ATC, for this request and amount) and be above the last its card used.
  -- Checked here under the customer's lock and moved forward below, in the transaction that
  -- writes the request, so two requests with one ATC never both succeed. The switch declines a
  -- replay itself; one that reaches this point was decided on the card's row as it still is
  -- (else its status is 'stale'), so it is a decision the rules do not allow. And a chip card
  -- whose profile allows no fallback is approved only by its chip.
  SELECT CASE
      WHEN e.atc IS NOT NULL AND NOT ledger.authorisation_valid(v_key, e.word, e.terminal_id,
             e.transmission_time, e.stan, e.message_class, e.pan_hash, e.requested_minor,
             e.requested_currency, e.atc)
        THEN 'no valid word from the HSM (a cryptogram it verified) for this ATC'
      WHEN e.atc IS NOT NULL AND (c.emv_imk_ac IS NULL OR c.emv_last_atc >= e.atc)
        THEN 'an ATC not above the card''s last, or for a card with no EMV profile'
      WHEN e.atc IS NULL AND e.outcome = 'approved'
           AND e.kind IN ('withdrawal', 'transfer', 'inquiry')
           AND c.emv_imk_ac IS NOT NULL AND NOT c.emv_fallback_allowed
        THEN 'this chip card is approved only by its chip'
      END INTO v_refusal
    FROM unnest(v_items) v
    JOIN unnest(atcs, chip_authorisations, terminal_ids, transmission_times, stans,
                message_classes, pan_hashes, requested_minor, requested_currencies, outcomes,
                kinds) WITH ORDINALITY
         AS e(atc, word, terminal_id, transmission_time, stan, message_class, pan_hash,
              requested_minor, requested_currency, outcome, kind, position)
      ON e.position = v.position
    JOIN ledger.cards c ON c.card_id = v.card_id
   WHERE v.status = 'write'
   ORDER BY 1 NULLS LAST LIMIT 1;
  IF v_refusal IS NOT NULL THEN
    RAISE EXCEPTION 'refused: %', v_refusal USING ERRCODE = 'insufficient_privilege';
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
  -- EMV (0003_emv): each written chip request moves its card's last ATC to its own (checked
  -- above). A statement of its own: the counters above may have updated the same row.
  UPDATE ledger.cards c SET emv_last_atc = e.atc
    FROM unnest(v_items) v
    JOIN unnest(atcs) WITH ORDINALITY AS e(atc, position) ON e.position = v.position
   WHERE c.card_id = v.card_id AND v.status = 'write' AND e.atc IS NOT NULL;
  -- ATM cash (0004_cash): the notes each written request moves, checked against the cassettes.
  PERFORM ledger.dispense_notes(v_items, terminal_ids, kinds, outcomes, currencies,
    original_transmission_times, original_stans, original_message_classes, note_counts);

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
-- derivation key are set by provisioning, never by the switch. And only with the HSM's word
-- that it generated them under this terminal's own TMK: keys copied from another terminal, or
-- generated under another terminal's TMK, are refused.
CREATE OR REPLACE FUNCTION ledger.set_session_keys(p_terminal_id text, p_tpk text, p_tak text,
                                                   p_authorisation bytea)
  RETURNS boolean
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
DECLARE
  v_key ledger.authorisation_key;
  v_tmk text;
BEGIN
  SELECT * INTO v_key FROM ledger.authorisation_key;
  SELECT tmk INTO v_tmk FROM ledger.terminals WHERE terminal_id = p_terminal_id FOR UPDATE;
  IF NOT FOUND THEN
    RETURN false;
  ELSIF NOT ledger.word_valid(v_key, p_authorisation, ARRAY['kiosk-switch session keys v1',
          p_terminal_id, v_tmk, p_tpk, p_tak]) THEN
    RAISE EXCEPTION 'refused: no valid word from the HSM for these session keys of %',
      p_terminal_id USING ERRCODE = 'insufficient_privilege';
  END IF;
  UPDATE ledger.terminals SET tpk = p_tpk, tak = p_tak WHERE terminal_id = p_terminal_id;
  RETURN true;
END $$;

-- The applied migration and the functions file's digest, so a switch refuses a schema older
-- than its code.
CREATE OR REPLACE FUNCTION ledger.schema_state(OUT version integer, OUT functions_sha256 text)
  LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
BEGIN
  SELECT coalesce(max(m.version), 0) INTO version FROM ledger.schema_migrations m;
  SELECT f.sha256 INTO functions_sha256 FROM ledger.schema_functions f;
END $$;

-- Every chain's head, for the anchor publisher (which signs them with a key the database never
-- sees): hashes only, no customer data.
CREATE OR REPLACE FUNCTION ledger.audit_heads_now()
  RETURNS TABLE (lane integer, seq bigint, hash bytea)
  LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
BEGIN
  RETURN QUERY SELECT h.lane, h.seq, h.hash FROM ledger.audit_heads h ORDER BY h.lane;
END $$;

-- The check value of the authorisation key: the switch compares it with its HSM's at start.
CREATE OR REPLACE FUNCTION ledger.authorisation_check_value() RETURNS text
  LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
BEGIN
  RETURN (SELECT check_value FROM ledger.authorisation_key);
END $$;

-- The rules the database enforces, so the switch can refuse to start with others.
CREATE OR REPLACE FUNCTION ledger.current_policy(OUT pin_tries_max integer,
                                                 OUT cross_customer_transfers boolean)
  LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
BEGIN
  SELECT p.pin_tries_max, p.cross_customer_transfers INTO pin_tries_max, cross_customer_transfers
    FROM ledger.policy p;
END $$;

-- The switch executes these eight and nothing else. Functions are executable by PUBLIC unless
-- revoked: the internal ones (decisions, hashing, blocks) are the owner's only.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA ledger FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
  ledger.read_batch(bytea[], text[], text[], text[], text[], text[], text[], text[], text[]),
  ledger.post_batch(bytea[], text[], text[], text[], text[], text[], text[], text[], bigint[],
                    text[], bigint[], text[], text[], text[], text[], text[], text[], text[],
                    text[], bigint[], bigint[], date[], timestamptz[], text[], text[], text[],
                    text[], bigint[], bigint[], bigint[], boolean[], text[], integer[], date[],
                    bigint[], integer[], integer[], bytea[], bytea[], integer[]),
  ledger.terminal_keys(text),
  ledger.set_session_keys(text, text, text, bytea),
  ledger.schema_state(),
  ledger.current_policy(),
  ledger.audit_heads_now(),
  ledger.authorisation_check_value()
  TO ledger_switch;

-- Operations: the switch processes, terminal events, traffic, alerts and journal checks
-- (tables in 0002_terminal_events.sql). The switch writes them only through these functions,
-- which append events and never rewrite them, and reads them through the rest. Reads are SQL:
-- they run once per refresh, not per request, so a plan per call costs nothing that matters.

-- A switch process is alive (at start, then every beat), or has stopped.
CREATE OR REPLACE FUNCTION ledger.process_beat(
  p_process_id text, p_host text, p_pid integer, p_started_at timestamptz, p_at timestamptz,
  p_stopped boolean
) RETURNS void
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
BEGIN
  INSERT INTO ledger.switch_processes AS s (process_id, host, pid, started_at, beat_at,
                                            stopped_at)
    VALUES (p_process_id, p_host, p_pid, p_started_at, p_at,
            CASE WHEN p_stopped THEN p_at END)
    ON CONFLICT (process_id) DO UPDATE
      SET beat_at = greatest(s.beat_at, EXCLUDED.beat_at),
          stopped_at = coalesce(s.stopped_at, EXCLUDED.stopped_at);
END $$;

-- A batch of session events from one process, in its order.
CREATE OR REPLACE FUNCTION ledger.record_terminal_events(
  p_process_id text, terminal_ids text[], kinds text[], occurred_ats timestamptz[],
  connection_seqs bigint[], details jsonb[]
) RETURNS integer
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
DECLARE
  v_count integer;
BEGIN
  -- Alert transitions are appended by the alert functions, in the transaction that makes them.
  IF 'alert' = ANY (kinds) THEN
    RAISE EXCEPTION 'alert events are written by the alert functions only'
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  INSERT INTO ledger.terminal_events (terminal_id, kind, occurred_at, process_id,
                                      connection_seq, detail)
    SELECT i.terminal_id, i.kind, i.occurred_at, p_process_id, i.connection_seq, i.detail
      FROM unnest(terminal_ids, kinds, occurred_ats, connection_seqs, details) WITH ORDINALITY
           AS i(terminal_id, kind, occurred_at, connection_seq, detail, position)
     ORDER BY i.position;
  GET DIAGNOSTICS v_count = ROW_COUNT;
  RETURN v_count;
END $$;

-- Two counts-by-key objects added key by key.
CREATE OR REPLACE FUNCTION ledger.add_counts(base jsonb, added jsonb) RETURNS jsonb
  LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT coalesce(jsonb_object_agg(code, total), '{}')
    FROM (SELECT code, sum(count::bigint) AS total
            FROM (SELECT * FROM jsonb_each_text(base)
                  UNION ALL SELECT * FROM jsonb_each_text(added)) AS both_counts(code, count)
           GROUP BY code) AS summed
$$;

-- Two histograms of the same bounds added bucket by bucket.
CREATE OR REPLACE FUNCTION ledger.add_histograms(base integer[], added integer[])
  RETURNS integer[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT array_agg(coalesce(base_count, 0) + coalesce(added_count, 0) ORDER BY position)
    FROM unnest(base, added) WITH ORDINALITY AS buckets(base_count, added_count, position)
$$;

-- A process's traffic since its last flush, one item per terminal and bucket, added to the
-- process's own rows (created on first use). latency_counts holds the items' histograms one
-- after another, each of the same size.
CREATE OR REPLACE FUNCTION ledger.record_terminal_traffic(
  p_process_id text, terminal_ids text[], bucket_starts timestamptz[], request_counts integer[],
  financial_counts integer[], approved_counts integer[], response_code_counts jsonb[],
  latency_counts integer[], last_seen_ats timestamptz[]
) RETURNS integer
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
DECLARE
  v_count integer;
  v_size integer := cardinality(latency_counts) / greatest(cardinality(terminal_ids), 1);
BEGIN
  ASSERT v_size * cardinality(terminal_ids) = cardinality(latency_counts),
    'one histogram of the same size per item';
  INSERT INTO ledger.terminal_traffic AS t
    SELECT i.terminal_id, i.bucket_start, p_process_id, i.requests, i.financial, i.approved,
           i.response_codes,
           latency_counts[(i.position - 1) * v_size + 1 : i.position * v_size], i.last_seen_at
      FROM unnest(terminal_ids, bucket_starts, request_counts, financial_counts,
                  approved_counts, response_code_counts, last_seen_ats) WITH ORDINALITY
           AS i(terminal_id, bucket_start, requests, financial, approved, response_codes,
                last_seen_at, position)
    ON CONFLICT (terminal_id, bucket_start, process_id) DO UPDATE
      SET requests = t.requests + EXCLUDED.requests,
          financial = t.financial + EXCLUDED.financial,
          approved = t.approved + EXCLUDED.approved,
          response_codes = ledger.add_counts(t.response_codes, EXCLUDED.response_codes),
          latency_counts = ledger.add_histograms(t.latency_counts, EXCLUDED.latency_counts),
          last_seen_at = greatest(t.last_seen_at, EXCLUDED.last_seen_at);
  GET DIAGNOSTICS v_count = ROW_COUNT;
  RETURN v_count;
END $$;

-- Each terminal's traffic with buckets starting in [p_from, p_to), summed over processes:
-- per business day (which starts p_cutover after midnight UTC), or over the whole range when
-- p_cutover is NULL (business_date NULL).
CREATE OR REPLACE FUNCTION ledger.traffic_totals(p_from timestamptz, p_to timestamptz,
                                                 p_cutover interval)
  RETURNS TABLE (terminal_id text, business_date date, requests bigint, financial bigint,
                 approved bigint, response_codes jsonb, latency_counts bigint[],
                 last_seen_at timestamptz)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
  WITH buckets AS (
    SELECT t.*, ((t.bucket_start AT TIME ZONE 'UTC') - p_cutover)::date AS day
      FROM ledger.terminal_traffic t
     WHERE t.bucket_start >= p_from AND t.bucket_start < p_to),
  totals AS (
    SELECT r.terminal_id, r.day, sum(r.requests) AS requests, sum(r.financial) AS financial,
           sum(r.approved) AS approved, max(r.last_seen_at) AS last_seen_at
      FROM buckets r GROUP BY r.terminal_id, r.day),
  codes AS (
    SELECT c.terminal_id, c.day, jsonb_object_agg(c.code, c.total) AS response_codes
      FROM (SELECT r.terminal_id, r.day, e.key AS code, sum(e.value::bigint) AS total
              FROM buckets r CROSS JOIN LATERAL jsonb_each_text(r.response_codes) e
             GROUP BY 1, 2, 3) c
     GROUP BY c.terminal_id, c.day),
  latency AS (
    SELECT h.terminal_id, h.day, array_agg(h.total ORDER BY h.position) AS latency_counts
      FROM (SELECT r.terminal_id, r.day, u.position, sum(u.count)::bigint AS total
              FROM buckets r CROSS JOIN LATERAL unnest(r.latency_counts) WITH ORDINALITY
                   AS u(count, position)
             GROUP BY 1, 2, 3) h
     GROUP BY h.terminal_id, h.day)
  SELECT t.terminal_id, t.day, t.requests, t.financial, t.approved,
         coalesce(c.response_codes, '{}'), l.latency_counts, t.last_seen_at
    FROM totals t
    LEFT JOIN codes c ON c.terminal_id = t.terminal_id AND c.day IS NOT DISTINCT FROM t.day
    LEFT JOIN latency l ON l.terminal_id = t.terminal_id AND l.day IS NOT DISTINCT FROM t.day
   ORDER BY t.terminal_id, t.day
$$;

-- Every provisioned terminal with what the fleet view decides its state from: its latest
-- sign-on, whether that connection has closed since, the process that serves it, and when it
-- was last seen (any event, or traffic in buckets from p_since on).
CREATE OR REPLACE FUNCTION ledger.fleet_state(p_since timestamptz)
  RETURNS TABLE (terminal_id text, location text, status text, signed_on_at timestamptz,
                 closed_at timestamptz, process_id text, process_beat_at timestamptz,
                 process_stopped_at timestamptz, last_event_at timestamptz,
                 last_traffic_at timestamptz)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
  SELECT t.terminal_id, t.location, t.status, opened.occurred_at, closed.occurred_at,
         opened.process_id, p.beat_at, p.stopped_at, latest.occurred_at, traffic.last_seen_at
    FROM ledger.terminals t
    LEFT JOIN LATERAL (
      SELECT e.occurred_at, e.process_id, e.connection_seq FROM ledger.terminal_events e
       WHERE e.terminal_id = t.terminal_id AND e.kind = 'sign_on'
       ORDER BY e.occurred_at DESC LIMIT 1) opened ON true
    LEFT JOIN LATERAL (
      SELECT e.occurred_at FROM ledger.terminal_events e
       WHERE e.terminal_id = t.terminal_id AND e.occurred_at >= opened.occurred_at
         AND e.kind IN ('sign_off', 'disconnect')
         AND (e.process_id, e.connection_seq) = (opened.process_id, opened.connection_seq)
       ORDER BY e.occurred_at DESC LIMIT 1) closed ON true
    LEFT JOIN ledger.switch_processes p ON p.process_id = opened.process_id
    LEFT JOIN LATERAL (
      SELECT e.occurred_at FROM ledger.terminal_events e
       WHERE e.terminal_id = t.terminal_id AND e.kind <> 'alert'
       ORDER BY e.occurred_at DESC LIMIT 1) latest ON true
    LEFT JOIN LATERAL (
      SELECT max(r.last_seen_at) AS last_seen_at FROM ledger.terminal_traffic r
       WHERE r.terminal_id = t.terminal_id AND r.bucket_start >= p_since) traffic ON true
   ORDER BY t.terminal_id
$$;

-- The session events the SLA report replays for [p_from, p_to): each terminal's last one
-- before the range (was it signed on when the range began?), then every one inside it, each
-- with its process's last beat and stop (a session ends at the latest when its process does).
CREATE OR REPLACE FUNCTION ledger.session_events(p_from timestamptz, p_to timestamptz)
  RETURNS TABLE (terminal_id text, kind text, occurred_at timestamptz, process_id text,
                 connection_seq bigint, process_beat_at timestamptz,
                 process_stopped_at timestamptz)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
  WITH events AS (
    SELECT before.* FROM ledger.terminals t CROSS JOIN LATERAL (
      SELECT e.terminal_id, e.kind, e.occurred_at, e.process_id, e.connection_seq
        FROM ledger.terminal_events e
       WHERE e.terminal_id = t.terminal_id AND e.occurred_at < p_from
         AND e.kind IN ('sign_on', 'key_change', 'sign_off', 'disconnect')
       ORDER BY e.occurred_at DESC LIMIT 1) before
    UNION ALL
    SELECT e.terminal_id, e.kind, e.occurred_at, e.process_id, e.connection_seq
      FROM ledger.terminal_events e
     WHERE e.occurred_at >= p_from AND e.occurred_at < p_to AND e.terminal_id IS NOT NULL
       AND e.kind IN ('sign_on', 'key_change', 'sign_off', 'disconnect'))
  SELECT e.terminal_id, e.kind, e.occurred_at, e.process_id, e.connection_seq, p.beat_at,
         p.stopped_at
    FROM events e LEFT JOIN ledger.switch_processes p USING (process_id)
   ORDER BY e.occurred_at, e.terminal_id
$$;

-- The switch processes that beat from p_since on and have not stopped.
CREATE OR REPLACE FUNCTION ledger.live_processes(p_since timestamptz) RETURNS SETOF text
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
  SELECT p.process_id FROM ledger.switch_processes p
   WHERE p.beat_at >= p_since AND p.stopped_at IS NULL ORDER BY p.process_id
$$;

-- The terminals, for reports that list every one.
CREATE OR REPLACE FUNCTION ledger.terminal_list()
  RETURNS TABLE (terminal_id text, location text, status text)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
  SELECT t.terminal_id, t.location, t.status FROM ledger.terminals t ORDER BY t.terminal_id
$$;

-- Appends an alert's transition to the terminal events, in the transaction that made it.
CREATE OR REPLACE FUNCTION ledger.append_alert_event(changed ledger.alerts, p_at timestamptz,
                                                     p_process_id text) RETURNS void
  LANGUAGE sql AS $$
  INSERT INTO ledger.terminal_events (terminal_id, kind, occurred_at, process_id, detail)
    VALUES (changed.terminal_id, 'alert', p_at, p_process_id,
            jsonb_build_object('alert_id', changed.alert_id, 'rule', changed.rule,
                               'subject', changed.subject, 'state', changed.state))
$$;

-- Raises an alert unless one for the same rule and subject is open: `created` says which, so
-- of several switch processes raising it at once exactly one notifies.
CREATE OR REPLACE FUNCTION ledger.fire_alert(
  p_rule text, p_subject text, p_terminal_id text, p_severity text, p_summary text,
  p_at timestamptz, p_process_id text
) RETURNS TABLE (alert jsonb, created boolean)
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
DECLARE
  v_alert ledger.alerts;
BEGIN
  INSERT INTO ledger.alerts AS a (rule, subject, terminal_id, severity, summary, state,
                                  raised_at, raised_by)
    VALUES (p_rule, p_subject, p_terminal_id, p_severity, p_summary, 'firing', p_at,
            p_process_id)
    ON CONFLICT (rule, subject) WHERE state <> 'resolved' DO NOTHING
    RETURNING a.* INTO v_alert;
  IF v_alert.alert_id IS NULL THEN
    SELECT a.* INTO v_alert FROM ledger.alerts a
     WHERE (a.rule, a.subject) = (p_rule, p_subject) AND a.state <> 'resolved';
    RETURN QUERY SELECT to_jsonb(v_alert), false;
    RETURN;
  END IF;
  PERFORM ledger.append_alert_event(v_alert, p_at, p_process_id);
  RETURN QUERY SELECT to_jsonb(v_alert), true;
END $$;

-- Resolves an open alert; NULL when it was resolved already (by another process).
CREATE OR REPLACE FUNCTION ledger.resolve_alert(p_alert_id bigint, p_at timestamptz,
                                                p_process_id text) RETURNS jsonb
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
DECLARE
  v_alert ledger.alerts;
BEGIN
  UPDATE ledger.alerts a SET state = 'resolved', resolved_at = greatest(p_at, a.raised_at)
   WHERE a.alert_id = p_alert_id AND a.state <> 'resolved'
  RETURNING a.* INTO v_alert;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  PERFORM ledger.append_alert_event(v_alert, p_at, p_process_id);
  RETURN to_jsonb(v_alert);
END $$;

-- An operator acknowledges a firing alert. outcome: 'acknowledged', 'unknown' (no such alert)
-- or 'not_firing' (acknowledged or resolved already); `alert` is the alert as it now stands.
CREATE OR REPLACE FUNCTION ledger.acknowledge_alert(p_alert_id bigint, p_by text,
                                                    p_at timestamptz, p_process_id text)
  RETURNS TABLE (outcome text, alert jsonb)
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
DECLARE
  v_alert ledger.alerts;
BEGIN
  UPDATE ledger.alerts a SET state = 'acknowledged', acknowledged_by = p_by,
         acknowledged_at = greatest(p_at, a.raised_at)
   WHERE a.alert_id = p_alert_id AND a.state = 'firing'
  RETURNING a.* INTO v_alert;
  IF FOUND THEN
    PERFORM ledger.append_alert_event(v_alert, p_at, p_process_id);
    RETURN QUERY SELECT 'acknowledged', to_jsonb(v_alert);
    RETURN;
  END IF;
  SELECT a.* INTO v_alert FROM ledger.alerts a WHERE a.alert_id = p_alert_id;
  RETURN QUERY SELECT CASE WHEN FOUND THEN 'not_firing' ELSE 'unknown' END,
                      CASE WHEN FOUND THEN to_jsonb(v_alert) END;
END $$;

-- Every open alert, then those raised or resolved from p_since on, newest first, at most
-- p_limit in all.
CREATE OR REPLACE FUNCTION ledger.alert_list(p_since timestamptz, p_limit integer)
  RETURNS SETOF jsonb
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
  SELECT to_jsonb(a) FROM ledger.alerts a
   WHERE a.state <> 'resolved' OR a.raised_at >= p_since OR a.resolved_at >= p_since
   ORDER BY a.state = 'resolved', a.raised_at DESC, a.alert_id DESC
   LIMIT p_limit
$$;

-- The alerts raised in [p_from, p_to), for the SLA report.
CREATE OR REPLACE FUNCTION ledger.alerts_raised(p_from timestamptz, p_to timestamptz)
  RETURNS SETOF jsonb
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
  SELECT to_jsonb(a) FROM ledger.alerts a
   WHERE a.raised_at >= p_from AND a.raised_at < p_to
   ORDER BY a.raised_at, a.alert_id
$$;

-- A run of `audit verify` by a switch process, and the latest one.
CREATE OR REPLACE FUNCTION ledger.record_audit_check(
  p_process_id text, p_at timestamptz, p_outcome text, p_records bigint, p_problem text
) RETURNS void
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
BEGIN
  INSERT INTO ledger.audit_checks (checked_at, process_id, outcome, records, problem)
    VALUES (p_at, p_process_id, p_outcome, p_records, p_problem);
END $$;

CREATE OR REPLACE FUNCTION ledger.latest_audit_check()
  RETURNS TABLE (checked_at timestamptz, process_id text, outcome text, records bigint,
                 problem text)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
  SELECT c.checked_at, c.process_id, c.outcome, c.records, c.problem FROM ledger.audit_checks c
   ORDER BY c.checked_at DESC, c.check_id DESC LIMIT 1
$$;

-- The switch executes the operations functions too; the helpers stay the owner's.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA ledger FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
  ledger.process_beat(text, text, integer, timestamptz, timestamptz, boolean),
  ledger.record_terminal_events(text, text[], text[], timestamptz[], bigint[], jsonb[]),
  ledger.record_terminal_traffic(text, text[], timestamptz[], integer[], integer[], integer[],
                                 jsonb[], integer[], timestamptz[]),
  ledger.traffic_totals(timestamptz, timestamptz, interval),
  ledger.fleet_state(timestamptz),
  ledger.session_events(timestamptz, timestamptz),
  ledger.terminal_list(),
  ledger.live_processes(timestamptz),
  ledger.fire_alert(text, text, text, text, text, timestamptz, text),
  ledger.resolve_alert(bigint, timestamptz, text),
  ledger.acknowledge_alert(bigint, text, timestamptz, text),
  ledger.alert_list(timestamptz, integer),
  ledger.alerts_raised(timestamptz, timestamptz),
  ledger.record_audit_check(text, timestamptz, text, bigint, text),
  ledger.latest_audit_check()
  TO ledger_switch;

-- ATM cash (0004_cash): cassettes, the notes each request moves, replenishment.

-- A terminal's cassettes as a decision reads them, in slot order.
CREATE OR REPLACE FUNCTION ledger.cassettes_of(p_terminal_id text) RETURNS jsonb
  LANGUAGE plpgsql STABLE AS $$
BEGIN
  RETURN (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'cassette_no', c.cassette_no, 'currency', c.currency,
                   'denomination_minor', c.denomination_minor,
                   'remaining_notes', c.remaining_notes, 'load_seq', c.load_seq)
                 ORDER BY c.cassette_no), '[]')
            FROM ledger.cassettes c WHERE c.terminal_id = p_terminal_id);
END $$;

-- The notes one transaction moved (positive: dispensed; negative: put back), in slot order.
CREATE OR REPLACE FUNCTION ledger.notes_of(p_transaction_id bigint) RETURNS jsonb
  LANGUAGE plpgsql STABLE AS $$
BEGIN
  RETURN (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'cassette_no', m.cassette_no, 'load_seq', m.load_seq,
                   'denomination_minor', m.denomination_minor, 'notes', m.notes)
                 ORDER BY m.cassette_no), '[]')
            FROM ledger.note_movements m WHERE m.transaction_id = p_transaction_id);
END $$;

-- The notes of a post_batch's written requests, per request and cassette: note_counts holds one
-- row per request (in the batch's order) and one column per cassette number, each the notes a
-- withdrawal dispenses or a reversal puts back (never negative: the kind gives the direction).
CREATE OR REPLACE FUNCTION ledger.notes_sent(
  items ledger.post_item[], terminal_ids text[], kinds text[], note_counts integer[]
) RETURNS TABLE (item integer, transaction_id bigint, terminal_id text, kind text,
                 cassette_no integer, notes integer)
  LANGUAGE plpgsql STABLE AS $$
BEGIN
  RETURN QUERY
    SELECT v.position, v.transaction_id, terminal_ids[v.position], kinds[v.position], slot.n,
           note_counts[v.position][slot.n]
      FROM unnest(items) v CROSS JOIN generate_subscripts(note_counts, 2) AS slot(n)
     WHERE v.status = 'write' AND note_counts[v.position][slot.n] <> 0;
END $$;

-- Why the notes of one written request are not what the rules send, or NULL. A withdrawal at a
-- terminal with cassettes carries the mix of its amount from them (how many each may give is
-- checked over the whole batch); one at a terminal without cassettes (cash the host does not
-- count) carries none. A reversal puts back notes its original dispensed, worth what it moves,
-- unless a cassette was replenished since (those notes were counted out with the old load):
-- then it puts back none. Nothing else moves notes.
CREATE OR REPLACE FUNCTION ledger.notes_refusal(
  p_kind text, p_moves boolean, p_move_minor bigint, p_currency text, p_terminal_id text,
  p_original_id bigint, p_sent jsonb
) RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
  v_sent_notes integer := (SELECT coalesce(sum(value::integer), 0) FROM jsonb_each_text(p_sent));
  v_negative boolean := EXISTS (SELECT 1 FROM jsonb_each_text(p_sent) WHERE value::integer < 0);
  v_value_minor bigint;
  v_unknown boolean;
  v_other_currency boolean;
  v_dispensed boolean;
  v_same_load boolean;
  v_over_original boolean;
BEGIN
  SELECT coalesce(sum(s.value::bigint * c.denomination_minor), 0),
         bool_or(c.cassette_no IS NULL), bool_or(c.currency <> p_currency)
    INTO v_value_minor, v_unknown, v_other_currency
    FROM jsonb_each_text(p_sent) s
    LEFT JOIN ledger.cassettes c ON (c.terminal_id, c.cassette_no) = (p_terminal_id, s.key::smallint);
  IF v_negative THEN
    RETURN 'a negative count of notes';
  ELSIF v_sent_notes > 0 AND NOT (p_moves AND p_kind IN ('withdrawal', 'reversal')) THEN
    RETURN format('notes on a request (%s) that moves no cash', p_kind);
  ELSIF v_unknown THEN
    RETURN 'notes from a cassette this terminal does not have';
  ELSIF v_other_currency THEN
    RETURN 'notes of another currency than the amount''s';
  ELSIF p_kind = 'withdrawal' AND p_moves AND v_value_minor <> p_move_minor
        AND EXISTS (SELECT 1 FROM ledger.cassettes c WHERE c.terminal_id = p_terminal_id) THEN
    RETURN 'the note mix does not make the amount';
  ELSIF p_kind = 'reversal' AND p_moves THEN
    SELECT count(*) > 0, coalesce(bool_and(m.load_seq = c.load_seq), false),
           coalesce(bool_or(coalesce((p_sent ->> m.cassette_no::text)::integer, 0) > m.notes), false)
      INTO v_dispensed, v_same_load, v_over_original
      FROM ledger.note_movements m
      JOIN ledger.cassettes c ON (c.terminal_id, c.cassette_no) = (m.terminal_id, m.cassette_no)
     WHERE m.transaction_id = p_original_id AND m.notes > 0;
    IF NOT (v_dispensed AND v_same_load) AND v_sent_notes > 0 THEN
      RETURN 'notes put back into a cassette its original did not dispense from, or since replenished';
    ELSIF v_dispensed AND v_same_load AND (v_value_minor <> p_move_minor OR v_over_original
          OR EXISTS (SELECT 1 FROM jsonb_each_text(p_sent) s
                      WHERE NOT EXISTS (SELECT 1 FROM ledger.note_movements m
                                         WHERE m.transaction_id = p_original_id
                                           AND m.cassette_no = s.key::smallint AND m.notes > 0)))
    THEN
      RETURN 'the notes put back are not the undispensed part of the original''s mix';
    END IF;
  END IF;
  RETURN NULL;
END $$;

-- Called by post_batch under its locks (the cash account of every terminal an approved
-- withdrawal or reversal moves is locked, so one terminal's cassettes change in one transaction
-- at a time): refuses, as post_batch's other refusals, notes the rules would never send, then
-- records each request's notes and moves its cassettes' counts.
CREATE OR REPLACE FUNCTION ledger.dispense_notes(
  items ledger.post_item[], terminal_ids text[], kinds text[], outcomes text[],
  currencies text[], original_transmission_times text[], original_stans text[],
  original_message_classes text[], note_counts integer[]
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_refusal text;
BEGIN
  -- Only requests that carry notes or move cash are judged: declines and inquiries cost
  -- nothing here.
  SELECT r.refusal INTO v_refusal FROM (
    SELECT ledger.notes_refusal(
             kinds[v.position], outcomes[v.position] = 'approved' AND v.move_minor > 0,
             v.move_minor, currencies[v.position], terminal_ids[v.position], o.transaction_id,
             coalesce(sent.notes, '{}')) AS refusal
      FROM unnest(items) v
      LEFT JOIN (SELECT s.item, jsonb_object_agg(s.cassette_no, s.notes) AS notes
                   FROM ledger.notes_sent(items, terminal_ids, kinds, note_counts) s
                  GROUP BY s.item) sent ON sent.item = v.position
      LEFT JOIN ledger.transactions o
        ON kinds[v.position] = 'reversal'
       AND (o.customer_id, o.terminal_id, o.transmission_time, o.stan, o.message_class)
         = (v.customer_id, terminal_ids[v.position], original_transmission_times[v.position],
            original_stans[v.position], original_message_classes[v.position])
     WHERE v.status = 'write'
       AND (sent.notes IS NOT NULL OR (v.move_minor > 0 AND outcomes[v.position] = 'approved'
            AND kinds[v.position] IN ('withdrawal', 'reversal')))) r
   WHERE r.refusal IS NOT NULL LIMIT 1;
  IF v_refusal IS NULL AND EXISTS (
       SELECT 1 FROM ledger.notes_sent(items, terminal_ids, kinds, note_counts) s
         JOIN ledger.cassettes c ON (c.terminal_id, c.cassette_no) = (s.terminal_id, s.cassette_no)
        WHERE s.kind = 'withdrawal'
        GROUP BY c.terminal_id, c.cassette_no, c.remaining_notes
       HAVING sum(s.notes) > c.remaining_notes) THEN
    v_refusal := 'more notes than the cassette holds';
  END IF;
  IF v_refusal IS NOT NULL THEN
    RAISE EXCEPTION 'refused: %', v_refusal USING ERRCODE = 'insufficient_privilege';
  END IF;
  WITH moved AS (
    INSERT INTO ledger.note_movements
      SELECT s.transaction_id, s.terminal_id, s.cassette_no, c.load_seq, c.denomination_minor,
             CASE WHEN s.kind = 'withdrawal' THEN s.notes ELSE -s.notes END
        FROM ledger.notes_sent(items, terminal_ids, kinds, note_counts) s
        JOIN ledger.cassettes c ON (c.terminal_id, c.cassette_no) = (s.terminal_id, s.cassette_no)
    RETURNING terminal_id, cassette_no, notes)
  UPDATE ledger.cassettes c SET dispensed_notes = c.dispensed_notes + m.notes
    FROM (SELECT terminal_id, cassette_no, sum(notes) AS notes FROM moved GROUP BY 1, 2) m
   WHERE (c.terminal_id, c.cassette_no) = (m.terminal_id, m.cassette_no);
END $$;

-- An operator's replenishment (the owner's tool, or an operator through the operations app):
-- the cassette taken out (its notes left and those in the reject bin go back to the vault) and
-- one of `p_notes` notes put in. The switch role may call it: it moves money only between two
-- house accounts, and every call is journalled and recorded.
-- The difference in money is posted between the terminal's cash account and the house vault
-- account of the currency and journalled like any transaction; the counts start again and
-- the replenishment is recorded. `p_denomination_minor`, when given, must be the cassette's.
CREATE OR REPLACE FUNCTION ledger.replenish_cassette(
  p_terminal_id text, p_cassette_no integer, p_notes integer, p_denomination_minor bigint,
  p_at timestamptz, p_by text
) RETURNS ledger.replenishments
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
DECLARE
  v_terminal ledger.terminals;
  v_cassette ledger.cassettes;
  v_currency text;
  v_vault_id bigint;
  v_move_minor bigint;
  v_id bigint;
  v_lane integer;
  v_seq bigint;
  v_prev_hash bytea;
  v_row ledger.transactions;
  v_record ledger.replenishments;
BEGIN
  IF p_notes < 0 THEN
    RAISE EXCEPTION 'a cassette cannot hold % notes', p_notes
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  SELECT * INTO v_terminal FROM ledger.terminals WHERE terminal_id = p_terminal_id;
  v_currency := (SELECT currency FROM ledger.cassettes
                  WHERE (terminal_id, cassette_no) = (p_terminal_id, p_cassette_no));
  IF v_currency IS NULL THEN
    RAISE EXCEPTION 'terminal % has no cassette %', p_terminal_id, p_cassette_no
      USING ERRCODE = 'no_data_found';
  END IF;
  INSERT INTO ledger.accounts (customer_id, account_number, type_code, currency)
    VALUES (0, 'VAULT-' || v_currency, 'funding', v_currency)
    ON CONFLICT (account_number) DO NOTHING;
  v_vault_id := (SELECT account_id FROM ledger.accounts WHERE account_number = 'VAULT-' || v_currency);
  -- Locks as post_batch takes them: accounts by id first, then the cassette, then a lane.
  PERFORM 1 FROM ledger.accounts WHERE account_id IN (v_terminal.cash_account_id, v_vault_id)
    ORDER BY account_id FOR UPDATE;
  SELECT * INTO STRICT v_cassette FROM ledger.cassettes
   WHERE (terminal_id, cassette_no) = (p_terminal_id, p_cassette_no) FOR UPDATE;
  IF p_denomination_minor IS DISTINCT FROM NULL
     AND p_denomination_minor <> v_cassette.denomination_minor THEN
    RAISE EXCEPTION 'cassette % of terminal % holds notes of %, not %', p_cassette_no,
      p_terminal_id, v_cassette.denomination_minor, p_denomination_minor
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  v_move_minor := (p_notes - v_cassette.remaining_notes - v_cassette.rejected_notes)::bigint
                  * v_cassette.denomination_minor;
  IF v_move_minor <> 0 THEN
    v_id := nextval('ledger.transaction_ids');
    SELECT b.lane, b.seq, b.prev_hash INTO v_lane, v_seq, v_prev_hash FROM ledger.open_block() b;
    v_row := ROW(v_id, 0, p_terminal_id, to_char(p_at AT TIME ZONE 'UTC', 'MMDDHH24MISS'),
                 v_id::text, 'replenishment', 'replenishment', 'approved', '00', abs(v_move_minor),
                 v_currency, abs(v_move_minor), v_currency, NULL, NULL,
                 (p_at AT TIME ZONE 'UTC')::date, p_at, '', '', '', '', NULL, NULL, NULL, NULL,
                 v_lane, v_seq, '\x'::bytea)::ledger.transactions;
    -- Cash into the ATM is a debit of its cash account (withdrawals credit it), so the cash
    -- account's balance is minus the notes the host counts in the ATM.
    v_row.leaf := ledger.leaf(v_row, (
      SELECT string_agg(ledger.leg_line(a.account_id, a.customer_id, x.amount_minor, a.currency),
                        E'\n' ORDER BY a.account_id)
        FROM (VALUES (v_terminal.cash_account_id, -v_move_minor), (v_vault_id, v_move_minor))
             AS x(account_id, amount_minor)
        JOIN ledger.accounts a USING (account_id)));
    INSERT INTO ledger.transactions SELECT (v_row).*;
    INSERT INTO ledger.postings
      SELECT v_id, a.account_id, a.customer_id, x.amount_minor, a.currency
        FROM (VALUES (v_terminal.cash_account_id, -v_move_minor), (v_vault_id, v_move_minor))
             AS x(account_id, amount_minor)
        JOIN ledger.accounts a USING (account_id);
    UPDATE ledger.accounts SET balance_minor = balance_minor + CASE account_id
        WHEN v_vault_id THEN v_move_minor ELSE -v_move_minor END
     WHERE account_id IN (v_terminal.cash_account_id, v_vault_id);
    PERFORM ledger.close_block(v_lane, v_seq, v_prev_hash, now(), 1, v_row.leaf);
  END IF;
  UPDATE ledger.cassettes SET loaded_notes = p_notes, dispensed_notes = 0, rejected_notes = 0,
         load_seq = load_seq + 1, loaded_at = p_at
   WHERE (terminal_id, cassette_no) = (p_terminal_id, p_cassette_no);
  INSERT INTO ledger.replenishments (terminal_id, cassette_no, load_seq, replenished_at,
                                     replenished_by, currency, denomination_minor, loaded_notes,
                                     previous_loaded_notes, previous_dispensed_notes,
                                     previous_rejected_notes, previous_remaining_notes,
                                     transaction_id)
    VALUES (p_terminal_id, p_cassette_no, v_cassette.load_seq + 1, p_at, p_by, v_currency,
            v_cassette.denomination_minor, p_notes, v_cassette.loaded_notes,
            v_cassette.dispensed_notes, v_cassette.rejected_notes, v_cassette.remaining_notes,
            v_id)
  RETURNING * INTO v_record;
  RETURN v_record;
END $$;

-- Every terminal's cassettes, for the fleet view and the metrics (no card data).
CREATE OR REPLACE FUNCTION ledger.cash_state()
  RETURNS TABLE (terminal_id text, cassette_no integer, currency text,
                 denomination_minor bigint, loaded_notes integer, dispensed_notes integer,
                 rejected_notes integer, remaining_notes integer, low_notes integer)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
  SELECT c.terminal_id, c.cassette_no, c.currency, c.denomination_minor, c.loaded_notes,
         c.dispensed_notes, c.rejected_notes, c.remaining_notes, c.low_notes
    FROM ledger.cassettes c ORDER BY c.terminal_id, c.cassette_no
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA ledger FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger.cash_state(),
  ledger.replenish_cassette(text, integer, integer, bigint, timestamptz, text) TO ledger_switch;


-- Superseded signatures: none may be left in a database migrated before, for anyone to call.
-- A post_batch without the atcs array has no ATC check (0003_emv); one without the chip words
-- moves an ATC on the switch's say-so; one without note_counts moves no notes (0004_cash);
-- set_session_keys without the HSM's word copies keys.
DROP FUNCTION IF EXISTS ledger.post_batch(
  bytea[], text[], text[], text[], text[], text[], text[], text[], bigint[], text[], bigint[],
  text[], text[], text[], text[], text[], text[], text[], text[], bigint[], bigint[], date[],
  timestamptz[], text[], text[], text[], text[], bigint[], bigint[], bigint[], boolean[], text[],
  integer[], date[], bigint[], integer[]);
DROP FUNCTION IF EXISTS ledger.post_batch(
  bytea[], text[], text[], text[], text[], text[], text[], text[], bigint[], text[], bigint[],
  text[], text[], text[], text[], text[], text[], text[], text[], bigint[], bigint[], date[],
  timestamptz[], text[], text[], text[], text[], bigint[], bigint[], bigint[], boolean[], text[],
  integer[], date[], bigint[], integer[], integer[], bytea[]);
DROP FUNCTION IF EXISTS ledger.post_batch(
  bytea[], text[], text[], text[], text[], text[], text[], text[], bigint[], text[], bigint[],
  text[], text[], text[], text[], text[], text[], text[], text[], bigint[], bigint[], date[],
  timestamptz[], text[], text[], text[], text[], bigint[], bigint[], bigint[], boolean[], text[],
  integer[], date[], bigint[], integer[], integer[], bytea[], bytea[]);
DROP FUNCTION IF EXISTS ledger.set_session_keys(text, text, text);
DROP FUNCTION IF EXISTS ledger.authorisation_valid(
  ledger.authorisation_key, bytea, text, text, text, text, bytea, bigint, text);
