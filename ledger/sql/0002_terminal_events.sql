-- Operations data the switch writes: the switch processes alive, what happened to each
-- terminal's connection and session and to each alert (append-only, like the journal), each
-- terminal's traffic per time bucket, the alerts' current state and the journal checks. None of
-- it holds card data. The switch role writes and reads all of it only through the SECURITY
-- DEFINER functions at the end of functions.sql; it holds no privilege on these tables.

-- One row per switch process: a session whose process stopped beating ended when it last beat
-- (a killed process writes no disconnects), so the fleet view and the SLA report stay right
-- across crashes and restarts.
CREATE TABLE ledger.switch_processes (
  process_id text PRIMARY KEY,
  host text NOT NULL,
  pid integer NOT NULL CHECK (pid > 0),
  started_at timestamptz NOT NULL,
  beat_at timestamptz NOT NULL,
  stopped_at timestamptz,
  CHECK (beat_at >= started_at)
);

-- Session events (connect, sign-on, key change, sign-off, disconnect) and alert transitions.
-- terminal_id is NULL for a connection not yet signed on and for alerts about no terminal;
-- (process_id, connection_seq) names the connection a session event happened on.
CREATE TABLE ledger.terminal_events (
  event_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  terminal_id text,
  kind text NOT NULL
    CHECK (kind IN ('connect', 'sign_on', 'key_change', 'sign_off', 'disconnect', 'alert')),
  occurred_at timestamptz NOT NULL,
  process_id text NOT NULL,
  connection_seq bigint CHECK ((kind = 'alert') = (connection_seq IS NULL)),
  detail jsonb NOT NULL DEFAULT '{}',
  recorded_at timestamptz NOT NULL DEFAULT now()
);
-- The fleet view reads each terminal's latest events; reports scan by time (BRIN costs almost
-- nothing per insert).
CREATE INDEX terminal_events_terminal ON ledger.terminal_events (terminal_id, occurred_at);
CREATE INDEX terminal_events_occurred_at ON ledger.terminal_events USING brin (occurred_at);
CREATE TRIGGER no_update_delete BEFORE UPDATE OR DELETE ON ledger.terminal_events
  FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER no_truncate BEFORE TRUNCATE ON ledger.terminal_events
  FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();

-- Each terminal's answered requests per time bucket and switch process: every process adds its
-- own counts to its own row, so several processes never contend for one. response_codes counts
-- financial responses by code; latency_counts is the financial latency histogram over
-- ledger/activity.py's LATENCY_BOUNDS_MS (one count per bound, then one above the last).
CREATE TABLE ledger.terminal_traffic (
  terminal_id text NOT NULL,
  bucket_start timestamptz NOT NULL,
  process_id text NOT NULL,
  requests integer NOT NULL CHECK (requests >= 0),
  financial integer NOT NULL CHECK (financial >= 0),
  approved integer NOT NULL CHECK (approved >= 0 AND approved <= financial),
  response_codes jsonb NOT NULL,
  latency_counts integer[] NOT NULL,
  last_seen_at timestamptz NOT NULL,
  PRIMARY KEY (terminal_id, bucket_start, process_id)
);
CREATE INDEX terminal_traffic_bucket_start ON ledger.terminal_traffic USING brin (bucket_start);

-- Alerts as they stand: firing, then acknowledged by an operator, then resolved by the rule
-- that raised it (an acknowledged alert still resolves). At most one open alert per rule and
-- subject; a condition that comes back after resolving is a new alert. Every transition is also
-- appended to terminal_events.
CREATE TABLE ledger.alerts (
  alert_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  rule text NOT NULL,
  -- What the alert is about: a terminal id, a switch process, 'fleet' or 'journal'.
  subject text NOT NULL,
  terminal_id text,
  severity text NOT NULL CHECK (severity IN ('critical', 'warning')),
  summary text NOT NULL,
  state text NOT NULL CHECK (state IN ('firing', 'acknowledged', 'resolved')),
  raised_at timestamptz NOT NULL,
  raised_by text NOT NULL,
  acknowledged_at timestamptz,
  acknowledged_by text,
  resolved_at timestamptz,
  CHECK (state <> 'firing' OR acknowledged_at IS NULL),
  CHECK (state <> 'acknowledged' OR acknowledged_at IS NOT NULL),
  CHECK ((state = 'resolved') = (resolved_at IS NOT NULL)),
  CHECK ((acknowledged_at IS NULL) = (acknowledged_by IS NULL))
);
CREATE UNIQUE INDEX alerts_open ON ledger.alerts (rule, subject) WHERE state <> 'resolved';
CREATE INDEX alerts_raised_at ON ledger.alerts (raised_at);

-- Each run of `audit verify` the switch made: the latest one decides the journal alert.
CREATE TABLE ledger.audit_checks (
  check_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  checked_at timestamptz NOT NULL,
  process_id text NOT NULL,
  outcome text NOT NULL CHECK (outcome IN ('ok', 'damaged', 'failed')),
  records bigint,
  problem text CHECK ((outcome = 'ok') = (problem IS NULL))
);
CREATE TRIGGER no_update_delete BEFORE UPDATE OR DELETE ON ledger.audit_checks
  FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();

REVOKE ALL ON ledger.switch_processes, ledger.terminal_events, ledger.terminal_traffic,
  ledger.alerts, ledger.audit_checks FROM ledger_switch;
