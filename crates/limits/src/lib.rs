//! Every limit of fincore, in one place: batch and event sizes, journal records and group
//! commit, the Raft log and its transport, gRPC and HTTP messages, queues, the client's
//! batching, and the hard ceilings of the ledger's in-memory format.
//!
//! Names carry their unit (`_BYTES`, `_EVENTS`, `_RECORDS`, `_ENTRIES`, ...) and put the
//! biggest qualifier last (`BATCH_EVENTS_MAX`, `JOURNAL_SEGMENT_BYTES_MAX_DEFAULT`). A
//! `_DEFAULT` is a starting value an operator may change; everything else is fixed by the
//! build. The `const _: () = assert!(..)` checks at the bottom state how the limits relate
//! (a full batch fits a journal record, a full request fits a message, ...), so a change to one
//! that breaks another fails the build instead of production.
//!
//! This crate must not depend on anything, hold anything but constants, or compute a limit at
//! run time: every crate depends on it, and a limit that needs the machine (the ledger's
//! memory-derived capacity) is computed at the edge from the constants here.

// ---------------------------------------------------------------------------------------------
// Batches and events (the ledger's unit of work).

/// Most events one batch may carry: TigerBeetle's limit, where 8,189 events of 128 bytes plus
/// the message headers fill a 1 MiB message. Kept for parity, and because a full batch is then
/// about 1 MiB everywhere downstream (one journal record, one Raft entry).
pub const BATCH_EVENTS_MAX: usize = 8189;

/// Size of one encoded account or transfer: fixed, so a batch is encoded by plain copies.
pub const EVENT_BYTES: usize = 128;

/// Size of a sealed batch's header (format version, operation, event count, timestamp).
pub const BATCH_HEADER_BYTES: usize = 16;

/// Size of a full sealed batch (header and `BATCH_EVENTS_MAX` events): 1,048,208 bytes.
pub const BATCH_BYTES_MAX: usize = BATCH_HEADER_BYTES + BATCH_EVENTS_MAX * EVENT_BYTES;

/// Most pending transfers expired at the start of one batch; the rest expire in the batches
/// after. As many as a batch has events, so expiring costs a batch at most twice its events.
pub const BATCH_EXPIRIES_MAX: usize = BATCH_EVENTS_MAX;

/// Most ids one lookup may ask for: one batch's worth, so one answer fits one message.
pub const LOOKUP_IDS_MAX: usize = BATCH_EVENTS_MAX;

/// Most rows one history query (`get_account_transfers`, `get_account_balances`) returns; a
/// larger `limit` is refused over the APIs and clamped inside the ledger.
pub const QUERY_ROWS_MAX: usize = BATCH_EVENTS_MAX;

/// Rows a history query returns over HTTP when it gives no `limit`.
pub const QUERY_ROWS_DEFAULT: usize = 100;

// ---------------------------------------------------------------------------------------------
// The ledger's in-memory format: hard ceilings, the same on every replica.

/// Most accounts a ledger can hold at all: accounts are addressed by `u32` indexes in the hash
/// index and in transfers' history entries. `create_accounts` answers `capacity_reached`
/// beyond it instead of overflowing an index.
pub const LEDGER_ACCOUNTS_MAX: u64 = u32::MAX as u64;

/// Most transfers a ledger can hold at all: transfers are addressed by 31-bit indexes, because
/// the top bit of an account's history entry marks an expiry. `create_transfers` answers
/// `capacity_reached` beyond it instead of overflowing an index.
pub const LEDGER_TRANSFERS_MAX: u64 = (1 << 31) - 1;

/// Share of the memory available at start that the default ledger capacity plans for; the rest
/// is left for the journal's buffers, the Raft log cache, a snapshot received from the leader
/// (decoded and checked beside the current state before it replaces it; snapshots themselves
/// are built, sent and received through files), the runtime and the OS.
pub const LEDGER_MEMORY_PERCENT_DEFAULT: u64 = 50;

/// Share of the ledger's memory budget given to accounts by default (the rest to transfers):
/// ledgers hold far more transfers than accounts.
pub const LEDGER_ACCOUNTS_MEMORY_PERCENT_DEFAULT: u64 = 10;

// ---------------------------------------------------------------------------------------------
// The journal (durable log; one record per batch or Raft entry).

/// Largest journal record body (16 MiB): a full Raft entry (about 1 MiB) with room to spare
/// for a future format, yet small enough that a corrupt length cannot make recovery allocate
/// without bound.
pub const JOURNAL_RECORD_BODY_BYTES_MAX: usize = 16 << 20;

/// Most records one group commit writes before its `fdatasync`: bounds how long the first
/// record of a group waits for the group to fill.
pub const JOURNAL_GROUP_RECORDS_MAX: usize = 256;

/// Most body bytes one group commit writes before its `fdatasync` (32 MiB): about 32 full
/// batches, enough to keep the disk busy, and a bound on the memory a group holds.
pub const JOURNAL_GROUP_BYTES_MAX: usize = 32 << 20;

/// Records that may wait for the journal's writer before the Raft log store's appends wait: about 64 MiB of full batches, a few groups' worth, so the writer always has
/// the next group ready while it syncs the current one.
pub const JOURNAL_QUEUE_RECORDS_MAX: usize = 64;

/// Size at which a journal segment file is closed and the next one started (256 MiB): purging
/// the log behind a snapshot deletes whole segments, so smaller ones free space sooner.
pub const JOURNAL_SEGMENT_BYTES_MAX_DEFAULT: u64 = 256 << 20;

/// Buffer of sequential file reads and writes (journal segments, snapshots):
/// large enough that a read or write costs one system call per MiB.
pub const IO_BUFFER_BYTES: usize = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Raft (replication) and its peer transport.

/// Upper bound on what postcard adds around a sealed batch to make a Raft entry: the log id
/// (term, node id, index: at most 10 bytes each as varints), the payload tag and the length
/// of the batch's bytes.
pub const RAFT_ENTRY_OVERHEAD_BYTES_MAX: usize = 64;

/// Largest Raft entry (a full sealed batch and its envelope); a membership entry is far smaller.
pub const RAFT_ENTRY_BYTES_MAX: usize = BATCH_BYTES_MAX + RAFT_ENTRY_OVERHEAD_BYTES_MAX;

/// Newest Raft log entries kept in memory by the log store (older ones are read back from the
/// journal): about 256 MiB of full batches, enough for followers that lag a little to be
/// served without reading the disk.
pub const RAFT_LOG_CACHED_ENTRIES_MAX: usize = 256;

/// Append calls of the Raft log store waiting for their records to become durable (the queue
/// to its flusher thread). Each holds records the journal writer has not yet made durable, of
/// which there are at most a full writer queue plus the group being written; so a sender waits
/// only when the flusher falls behind by more than the writer can hold, and that wait pushes
/// back on appends as the writer's own queue does. (For `replication/src/log_store.rs`, whose
/// queue is unbounded today.)
pub const RAFT_LOG_FLUSHES_QUEUED_MAX: usize =
    JOURNAL_QUEUE_RECORDS_MAX + JOURNAL_GROUP_RECORDS_MAX;

/// Batches waiting for one ledger apply thread: openraft hands over one batch and awaits its
/// outcome before the next, so one is all a queue ever holds. (For
/// `replication/src/applier.rs`, whose queues are unbounded today.)
pub const LEDGER_APPLY_JOBS_QUEUED_MAX: usize = 1;

/// Most entries one AppendEntries message carries (openraft's `max_payload_entries`): bounds a
/// replication message to about 64 MiB of full batches, so a follower catching up from the log
/// gets it in messages that each move in well under a second (openraft's default of 300 made
/// 300 MiB messages, which could not arrive within an RPC timeout of a heartbeat interval).
pub const RAFT_APPEND_ENTRIES_MAX: u64 = 64;

/// Raft entries between two snapshots (after which the log behind the snapshot is purged);
/// also `fincore serve --checkpoint-interval`'s default. 0 means never.
pub const RAFT_SNAPSHOT_INTERVAL_ENTRIES_DEFAULT: u64 = 4096;

/// Entries kept in the log behind a snapshot, so a follower only slightly behind catches up
/// from the log instead of a whole snapshot.
pub const RAFT_LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES: u64 = 64;

/// A learner being added to a group counts as caught up (and is promoted to voter) once the
/// log it holds is at most this many entries behind the leader's.
pub const RAFT_LEARNER_CAUGHT_UP_LAG_ENTRIES_MAX: u64 = 64;

/// How long `POST /v1/admin/replicas` waits for the new learner to catch up before it answers
/// that the node stays a learner (below the 120 s a `fincore admin` command waits for an answer).
pub const RAFT_LEARNER_CATCH_UP_SECONDS_MAX: u64 = 100;

/// Largest message between replicas (about 65 MiB): a full AppendEntries message
/// (`RAFT_APPEND_ENTRIES_MAX` entries of at most `RAFT_ENTRY_BYTES_MAX`) and 1 MiB for its
/// envelope. Snapshots travel in chunks of `PEER_SNAPSHOT_CHUNK_BYTES`. A message declaring more
/// is refused by the transport before its body is read.
pub const PEER_MESSAGE_BYTES_MAX: usize =
    RAFT_APPEND_ENTRIES_MAX as usize * RAFT_ENTRY_BYTES_MAX + (1 << 20);

/// Connections a node keeps open on its peer listener (each peer of a group dials one or two;
/// the rest is headroom for restarts). One more is accepted and closed at once.
pub const PEER_CONNECTIONS_MAX: usize = 256;

/// A peer has this long to complete its TLS handshake before the connection is closed.
pub const PEER_TLS_HANDSHAKE_SECONDS_MAX: u64 = 10;

/// Largest snapshot of a ledger's state: every account and every transfer the ledger can hold
/// at all, plus an expiry event per transfer and a failed id per possible transfer id, plus
/// the fixed fields. A peer offering a longer one is refused before a byte is written.
pub const SNAPSHOT_BYTES_MAX: u64 = 64
    + 4 * 8
    + LEDGER_ACCOUNTS_MAX * EVENT_BYTES as u64
    + LEDGER_TRANSFERS_MAX * (EVENT_BYTES as u64 + 1)
    + LEDGER_TRANSFERS_MAX * 12
    + LEDGER_TRANSFERS_MAX * 16;

/// Largest snapshot of a small replicated state held whole in memory (`replication::
/// small_state`: the meta group's cluster map): read, checked and decoded in one piece, so a
/// peer offering a longer one is refused before a byte is written.
pub const SMALL_STATE_SNAPSHOT_BYTES_MAX: u64 = 32 << 20;

/// Open watch streams (`WatchMap` and `WatchConfig` together) one meta replica serves at once
/// (each gateway and node holds one of each;
/// one more is refused RESOURCE_EXHAUSTED, so a flood of watchers cannot grow its memory).
pub const META_WATCHERS_MAX: usize = 1024;

/// Open `WatchMap` streams one API key with the `read` or `write` role may hold on one meta
/// replica, so that such a key cannot take every watcher from the gateways and nodes (which
/// watch with `admin` keys, bounded only by [`META_WATCHERS_MAX`]).
pub const META_WATCHERS_PER_KEY_MAX: usize = 64;

/// Open `WatchMap` streams all keys below `admin` together may hold on one meta replica: the
/// rest of [`META_WATCHERS_MAX`] stays for the gateways and nodes, however many read keys there
/// are.
pub const META_WATCHERS_BELOW_ADMIN_MAX: usize = 768;

/// Longest wait before a gateway watches the meta group's cluster map again after the watch
/// broke (the waits double from 50 ms up to this).
pub const GATEWAY_MAP_WATCH_RETRY_MS_MAX: u64 = 2_000;

/// How long a gateway started with `--meta` waits at start for the config center's values
/// before it serves on its `--flow-rules` (it takes them once the meta group answers).
pub const GATEWAY_META_FIRST_CONFIG_SECONDS_MAX: u64 = 10;

/// How long a gateway started with `--meta` waits at start for the meta group to hold a map.
pub const GATEWAY_META_FIRST_MAP_SECONDS_MAX: u64 = 60;

/// Keys the config center holds (`meta::config`); a new key past this is refused.
pub const CONFIG_KEYS_MAX: usize = 64;

/// Largest value of one config key (UTF-8 text, bytes).
pub const CONFIG_VALUE_BYTES_MAX: usize = 32 * 1024;

/// Bytes of one key name, node name or label (name or value) in the config center.
pub const CONFIG_NAME_BYTES_MAX: usize = 128;

/// Node names one gray release may name.
pub const CONFIG_GRAY_NODES_MAX: usize = 128;

/// Labels one gray release may name.
pub const CONFIG_GRAY_LABELS_MAX: usize = 16;

/// Changes one key's audit history keeps (the oldest are dropped first; a rollback reaches
/// only versions still in it).
pub const CONFIG_HISTORY_ENTRIES_MAX: usize = 32;

/// Bytes of old and new values and targets one key's audit history keeps (the newest change
/// is always kept, whatever its size).
pub const CONFIG_HISTORY_BYTES_MAX: usize = 32 * 1024;

/// Bytes of one gray release's target at its largest (names and labels).
const CONFIG_TARGET_BYTES_MAX: usize = CONFIG_GRAY_NODES_MAX * CONFIG_NAME_BYTES_MAX
    + CONFIG_GRAY_LABELS_MAX * 2 * CONFIG_NAME_BYTES_MAX;

/// Bytes one key takes at most, before JSON escaping: its value, a staged release (value and
/// target), its history (the bound, or one change of two values and a target past it) and,
/// per history entry, the rest (who, request id, numbers, field names).
pub const CONFIG_KEY_BYTES_MAX: usize = 2 * CONFIG_VALUE_BYTES_MAX
    + CONFIG_TARGET_BYTES_MAX
    + CONFIG_HISTORY_BYTES_MAX
    + 2 * CONFIG_VALUE_BYTES_MAX
    + CONFIG_TARGET_BYTES_MAX
    + CONFIG_HISTORY_ENTRIES_MAX * (2 * CONFIG_NAME_BYTES_MAX + 256);

// The config center fits the meta group's snapshot with every key at its largest and JSON
// doubling each byte (values, names and labels hold no control characters but tab and
// newlines, which escape to two bytes), beside the largest cluster map (one log entry).
const _: () = assert!(
    2 * CONFIG_KEYS_MAX * CONFIG_KEY_BYTES_MAX + BATCH_BYTES_MAX
        <= SMALL_STATE_SNAPSHOT_BYTES_MAX as usize
);

/// Largest request the meta group's gRPC service decodes: a `SetMap` whose map fills one log
/// entry, plus room for the rest of the message.
pub const META_REQUEST_BYTES_MAX: usize = BATCH_BYTES_MAX + 64 * 1024;

/// Records (transfers or expiry events) one step of a snapshot build writes while it holds the
/// ledger's read lock: about 8 MiB, a few milliseconds, after which batches waiting to apply go
/// first.
pub const SNAPSHOT_STEP_RECORDS_MAX: usize = 65_536;

/// How long a stopping replica waits for a snapshot build in progress to give up (it checks at
/// every step, so this is the time to finish writing and syncing one step's file at worst).
pub const SNAPSHOT_BUILD_STOP_SECONDS_MAX: u64 = 30;

/// Largest header of a snapshot file or a snapshot offer (64 KiB): the snapshot's last log
/// id and the group's membership with every member's addresses, a few hundred bytes in
/// practice; a longer one is refused as damaged or forged before it is read.
pub const SNAPSHOT_HEADER_BYTES_MAX: usize = 64 << 10;

/// Snapshot bytes in one message of a snapshot stream between replicas (1 MiB): the sender
/// reads its file a chunk at a time and the receiver writes each chunk to its own file, so a
/// snapshot of any size moves with a few chunks in memory.
pub const PEER_SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// Chunks a receiving replica holds between its network and its file writer before it stops
/// reading from the network (HTTP/2 flow control then holds the sender back).
pub const PEER_SNAPSHOT_CHUNKS_QUEUED_MAX: usize = 4;

/// Snapshot receptions a replica runs at once: each ends with a decoded ledger in memory, so a
/// second one waits to be retried instead of doubling that memory.
pub const PEER_SNAPSHOT_RECEPTIONS_MAX: usize = 1;

/// Fixed part of the time a snapshot's sending, checking and installing may take before the
/// sender gives up and the receiver drops what it received (10 s).
pub const PEER_SNAPSHOT_TIMEOUT_BASE_MS: u64 = 10_000;

/// Slowest rate a big message between replicas (AppendEntries, a snapshot) is allowed to move
/// and be handled at (4 MiB/s, over the network, the receiver's disk and its decoding
/// together): its timeout grows by a second for every this many bytes, so a follower catching
/// up is never cut off for being sent much.
pub const PEER_TRANSFER_RATE_BYTES_PER_SECOND_MIN: u64 = 4 << 20;

// ---------------------------------------------------------------------------------------------
// HTTP/2 flow control (client, node and peer transport alike).

/// Per-stream HTTP/2 window (16 MiB): a full batch (about 1 MiB) goes out without waiting for a
/// window update; HTTP/2's default of 64 KiB would cost a round trip per 64 KiB.
pub const HTTP2_STREAM_WINDOW_BYTES: u32 = 16 << 20;

/// Per-connection HTTP/2 window (64 MiB): several full streams in flight on one connection.
pub const HTTP2_CONNECTION_WINDOW_BYTES: u32 = 64 << 20;

// ---------------------------------------------------------------------------------------------
// The ledger API (gRPC and HTTP/JSON) and the node's request pipeline.

/// Largest gRPC message the ledger service and the client accept or send (16 MiB): a full
/// batch, packed or message-encoded, or a full query answer, fits with room to spare.
pub const GRPC_MESSAGE_BYTES_MAX: usize = 16 << 20;

/// Upper bound on one account or transfer encoded as a protobuf message (not packed), with
/// every field at its widest: 128-bit values are two `uint64`s in a sub-message. (Checked by a
/// test in the `api` crate.)
pub const GRPC_EVENT_BYTES_MAX: usize = 256;

/// Upper bound on what a request message adds around its events (field tags and lengths).
pub const GRPC_REQUEST_OVERHEAD_BYTES_MAX: usize = 64;

/// Largest HTTP request body (16 MiB): a full batch of compact JSON transfers is under 8 MiB.
pub const HTTP_BODY_BYTES_MAX: usize = 16 << 20;

/// Connections a node keeps open on each of its listeners (HTTP, gRPC); one more is accepted
/// and closed at once. Idle connections cost a task and a few KiB each, so thousands of idle
/// clients cannot lock out a well-behaved one.
pub const CONNECTIONS_PER_LISTENER_MAX: usize = 8192;

/// A client has this long to complete its TLS handshake on a client listener served with
/// `--tls-cert` before the connection is closed (a client that never sends its hello cannot
/// hold a connection).
pub const CLIENT_TLS_HANDSHAKE_SECONDS_MAX: u64 = 10;

/// A client has this long to send a request's headers before its HTTP/1.1 connection is closed
/// (a slow-header client cannot hold a connection).
pub const HTTP_HEADER_READ_SECONDS_MAX: u64 = 10;

/// An HTTP request that takes longer (body read, queueing, commit, answer) is answered 503
/// with `retryable` (a write may still commit: resend with the same ids).
pub const HTTP_REQUEST_SECONDS_MAX: u64 = 30;

/// Concurrent gRPC streams (calls) a client may open on one HTTP/2 connection.
pub const GRPC_STREAMS_PER_CONNECTION_MAX: u32 = 256;

/// HTTP/2 keepalive on gRPC connections: a ping after this much silence, and the connection
/// closed if the ping is not answered within as long again (dead peers free their slot).
pub const GRPC_KEEPALIVE_SECONDS: u64 = 20;

/// How long a stopping node lets open requests finish (HTTP and gRPC) before it closes the
/// connections still open.
pub const HTTP_SHUTDOWN_GRACE_SECONDS: u64 = 10;

/// Upper bound on one account or transfer as compact JSON, with every field at its widest and
/// every flag set. (Checked by a test in the `api` crate.)
pub const JSON_EVENT_BYTES_MAX: usize = 896;

/// Write requests that may wait in a node's queue to be batched before new ones are answered
/// "busy" (`fincore serve --queue-depth`'s default): at 8 full batches in flight, enough to
/// keep the next batches full without queueing for long.
pub const SERVER_QUEUE_REQUESTS_DEFAULT: usize = 256;

/// Largest `--queue-depth` accepted: even full of full requests, the queue holds at most
/// this many batches' worth of events in memory (about 64 GiB; keep it far lower in practice).
pub const SERVER_QUEUE_REQUESTS_MAX: usize = 65_536;

/// Batches a node has in flight through Raft at once; further requests queue (and coalesce
/// into full batches) meanwhile. Bounds the memory and the admitted-but-unapplied events.
pub const SERVER_BATCHES_IN_FLIGHT_MAX: usize = 8;

/// Parts of callers' batches a gateway queues for one group (of one kind) before new ones are
/// answered "busy": as a node's request queue.
pub const GATEWAY_GROUP_QUEUE_PARTS_MAX: usize = SERVER_QUEUE_REQUESTS_DEFAULT;

/// Calls a gateway has in flight to one group (of one kind) at once; further parts queue and
/// coalesce into fuller batches meanwhile, as a node's requests do.
pub const GATEWAY_GROUP_CALLS_IN_FLIGHT_MAX: usize = SERVER_BATCHES_IN_FLIGHT_MAX;

/// How long a gateway keeps trying one group for one call (the client follows leaders and
/// retries meanwhile): short of the caller's own deadline, so the caller hears "unavailable,
/// retry" rather than a request cut off.
pub const GATEWAY_GROUP_CALL_SECONDS_MAX: u64 = HTTP_REQUEST_SECONDS_MAX / 2;

/// How long a cross-group transfer's saga may stay open before any gateway's resolver aborts
/// it (cancels it in its home, then everywhere): past every step's own retries
/// ([`GATEWAY_GROUP_CALL_SECONDS_MAX`] each), so a live saga is not cut off while its gateway
/// still works on it.
pub const GATEWAY_SAGA_OPEN_SECONDS_MAX: u64 = 4 * GATEWAY_GROUP_CALL_SECONDS_MAX;

/// How long a gateway waits by default for a cross-group transfer's saga before answering
/// `outcome_pending` for it (the saga goes on; `gateway --saga-deadline-ms` sets it).
pub const GATEWAY_SAGA_DEADLINE_MS_DEFAULT: u64 = 5_000;

/// Batches of cross-group transfers a gateway finishes in the background after answering
/// them `outcome_pending`; past it, callers wait for their sagas' end (back-pressure).
pub const GATEWAY_SAGAS_DETACHED_MAX: usize = 256;

/// The longest saga deadline a gateway takes: short of the caller's own request deadline.
pub const GATEWAY_SAGA_DEADLINE_MS_MAX: u64 = GATEWAY_GROUP_CALL_SECONDS_MAX * 1_000;

/// The longest a `lookup_outcomes` call waits for outcomes to become final: short of the
/// request deadline and of the Rust client's attempt timeout (10 s by default), so the caller
/// hears the outcomes rather than a request cut off; a caller wanting longer asks again.
pub const OUTCOME_WAIT_MS_MAX: u32 = 5_000;

/// How often a waiting `lookup_outcomes` looks again.
pub const OUTCOME_POLL_MS: u64 = 25;

/// How often a gateway's resolver asks every group for sagas open too long.
pub const GATEWAY_SAGA_RESOLVE_PERIOD_SECONDS: u64 = 2;

/// Open saga copies a resolver takes from one group per round.
pub const GATEWAY_SAGA_RESOLVE_COPIES_MAX: usize = 1024;

/// Most ledger groups one machine runs for development and benchmarks (`dev --groups`,
/// `bench --groups`; their ports are 100 apart).
pub const LOCAL_GROUPS_MAX: u64 = 16;

/// Reads (lookups, history, balances) a node admits at once, waiting for their read index or
/// running; one more is answered "busy", as a write is when the queue is full.
pub const SERVER_READS_ADMITTED_MAX: usize = 256;

/// Admitted reads that run their query at once, each on a blocking thread under the ledger's
/// read lock (never on an async worker that Raft's heartbeats need); the others wait their turn.
pub const SERVER_READS_RUNNING_MAX: usize = 8;

/// How long a stopping node waits for the writes it has in flight to commit before it stops
/// Raft, which answers those still waiting "unavailable" (outcome unknown, retried with the
/// same ids). A healthy group commits in milliseconds; a leader cut off from its followers
/// would wait forever.
pub const SERVER_SHUTDOWN_WRITES_GRACE_SECONDS: u64 = 5;

/// After a node has stopped, blocking work still running (a snapshot being written) may delay
/// the process's exit at most this long.
pub const SERVER_RUNTIME_STOP_SECONDS_MAX: u64 = 30;

/// Callers of a node's state digest (`GET /v1/status?digest=true`) that may wait at once; more
/// are answered "busy". Digests are computed one at a time (each a pass over the whole state
/// that pauses apply) and remembered until the next apply.
pub const STATUS_DIGEST_CALLERS_MAX: usize = 4;

/// How often the live console (`/console`) samples the system while someone watches it: four
/// times a second, so a new leader shows within half a second of its election.
pub const CONSOLE_SAMPLE_INTERVAL_MS: u64 = 250;

/// How long a replica may take to give its status (one that does not answer within it shows
/// as unreachable in that sample; the next sample starts at once if this one ran over).
pub const CONSOLE_REPLICA_STATUS_TIMEOUT_MS: u64 = 400;

/// How many points each live sparkline keeps (half a minute at the sample interval).
pub const CONSOLE_HISTORY_POINTS: usize = 120;

/// How many `/console/events` streams one listener serves at once; more are refused busy.
pub const CONSOLE_STREAMS_MAX: usize = 32;

/// How long one `/console/events` stream lasts; then it ends and the page's EventSource opens
/// another (so idle sockets cannot hold every stream for ever).
pub const CONSOLE_STREAM_SECONDS_MAX: u64 = 300;

/// How long the console goes on sampling after its last reader left or asked (`/console/state`).
pub const CONSOLE_IDLE_SECONDS: u64 = 10;

const _: () = assert!(CONSOLE_SAMPLE_INTERVAL_MS * 4 <= 1_000);

// ---------------------------------------------------------------------------------------------
// The Rust client.

/// Single transfers (`Client::create_transfer`) waiting to be batched before callers wait for
/// room: four full batches.
pub const CLIENT_PENDING_SINGLES_MAX: usize = 4 * BATCH_EVENTS_MAX;

/// Batches of single transfers the client has in flight at once.
pub const CLIENT_SINGLE_BATCHES_IN_FLIGHT_MAX: usize = 4;

/// Attempts of one request before the client gives up (its retry policy's default).
pub const CLIENT_ATTEMPTS_MAX_DEFAULT: u32 = 50;

/// Distinct errors a client that gave up reports (the last, and the first others it met): a
/// refused TLS handshake shows its alert on some attempts and only "connection closed" on
/// others, so the last alone may hide the cause.
pub const CLIENT_GAVE_UP_ERRORS_REPORTED_MAX: usize = 4;

// ---------------------------------------------------------------------------------------------
// Client authentication (API keys).

/// Random bytes in an API key's secret (256 bits; shown as 64 hex digits).
pub const API_KEY_SECRET_BYTES: usize = 32;

/// Most API keys a keys file may hold (revoked keys are removed, not kept).
pub const API_KEYS_MAX: usize = 4096;

/// Longest API key name, in bytes.
pub const API_KEY_NAME_BYTES_MAX: usize = 64;

/// Largest keys file read: a file at `API_KEYS_MAX` keys is about 800 KiB.
pub const API_KEYS_FILE_BYTES_MAX: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Change events (the stream of `GET /v1/events` and `fincore.v1.Events/Subscribe`).

/// Largest event record in a replica's event files: a 2-byte length, 18 bytes of word lengths,
/// at most the ledger's whole 280-byte encoding, and a CRC32C. Records drop each 8-byte word's
/// leading zero bytes, so a typical transfer event takes 100–130 bytes.
pub const EVENT_LOG_RECORD_BYTES_MAX: usize = 304;

/// Events in one event file (at most 19 MiB of records, typically 7–8 MiB): the unit of
/// compaction.
pub const EVENT_LOG_SEGMENT_EVENTS: u64 = 65_536;

/// One position in every this many events of a file is kept in memory (4 bytes each), so a
/// read starts at most this many records before the event it wants.
pub const EVENT_LOG_INDEX_EVERY_EVENTS: u64 = 64;

/// Disk a replica's event files may use (about 35M events at 120 bytes); past it the oldest
/// file goes.
pub const EVENT_LOG_BYTES_MAX: u64 = 4 << 30;

/// Applied batches whose events wait for the event writer; a full queue holds apply back.
pub const EVENT_LOG_BATCHES_QUEUED_MAX: usize = 8;

/// Most events one page holds (`GET /v1/events?limit=`, a gRPC `Read`, a `Subscribe` message).
pub const EVENTS_PAGE_EVENTS_MAX: usize = 4096;

/// Events in a page when `limit` is not given.
pub const EVENTS_PAGE_EVENTS_DEFAULT: usize = 100;

/// Largest JSON event (a transfer event with every field at its widest is under 1.5 KiB).
pub const EVENT_JSON_BYTES_MAX: usize = 2048;

/// Largest protobuf event (a transfer event with every field set is under 400 bytes).
pub const EVENT_PROTO_BYTES_MAX: usize = 512;

/// Event pages read from disk at once (each at most `EVENTS_PAGE_EVENTS_MAX` records, 1.1 MiB);
/// more readers wait their turn.
pub const EVENTS_READS_RUNNING_MAX: usize = 8;

/// `Subscribe` streams a node serves at once; one more is refused busy.
pub const EVENTS_SUBSCRIBERS_MAX: usize = 64;

/// Pages queued for one subscriber before the node waits for it to read.
pub const EVENTS_SUBSCRIBE_PAGES_QUEUED_MAX: usize = 4;

/// How long a subscriber may leave a full queue unread before it is dropped (its stream ends
/// RESOURCE_EXHAUSTED, naming the sequence number to resume after).
pub const EVENTS_SUBSCRIBER_STALL_SECONDS_MAX: u64 = 10;

/// Times in a row a gateway subscribes again to a group's events (on another replica when the
/// one it follows fails) before its subscriber's stream ends UNAVAILABLE naming where to
/// resume; each try is one client call (`GATEWAY_GROUP_CALL_SECONDS_MAX` at most).
pub const GATEWAY_EVENTS_RESUBSCRIBES_MAX: u32 = 6;

/// First wait before a gateway subscribes again to a group's events; doubled on each failure
/// in a row up to [`GATEWAY_EVENTS_RESUBSCRIBE_BACKOFF_MS_MAX`].
pub const GATEWAY_EVENTS_RESUBSCRIBE_BACKOFF_MS_INITIAL: u64 = 50;

/// Longest wait between two of a gateway's subscriptions to a group's events.
pub const GATEWAY_EVENTS_RESUBSCRIBE_BACKOFF_MS_MAX: u64 = 1_000;

// ---------------------------------------------------------------------------------------------
// The CDC publisher (`fincore cdc`: change events into NATS JetStream).

/// Groups one publisher serves (`--group`, repeated).
pub const CDC_GROUPS_MAX: usize = 64;

/// Replicas named for one group (`--group G=URL,URL,…`), tried in turn.
pub const CDC_GROUP_REPLICAS_MAX: usize = 7;

/// Bytes of a group's name: one token of the NATS subject and part of the stream's name.
pub const CDC_GROUP_NAME_BYTES_MAX: usize = 64;

/// Reports of earlier calls a client piggy-backs on one call (`api::client_report`): a
/// server reads at most this many, a client sends at most this many.
pub const CLIENT_REPORTS_PER_CALL_MAX: usize = 8;

/// Reports a client keeps waiting for its next call; when full, the oldest is dropped.
pub const CLIENT_REPORTS_QUEUED_MAX: usize = 64;

/// Bytes of a client-report header a server reads; a longer one is refused whole (a full
/// call's worth is under 400 bytes).
pub const CLIENT_REPORT_BYTES_MAX: usize = 1024;

/// Log lines waiting for the thread that writes them to stderr. When the queue is full (a
/// slow disk, a pipe nobody reads) new lines are dropped and counted
/// (`fincore_log_lines_dropped_total`) instead of stalling the thread that logs. About 16 MiB
/// of 256-byte lines.
pub const LOG_LINES_QUEUED_MAX: usize = 65_536;

/// Bytes of a file holding a secret (a private key, a password, a token): far above any real
/// one, so that a wrong path (a log, a device) is refused instead of read whole.
pub const SECRET_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// Publishes of one group awaiting the broker's acknowledgement, by default (`--in-flight`).
pub const CDC_PUBLISHES_IN_FLIGHT_DEFAULT: usize = 4096;

/// Most publishes of one group awaiting acknowledgement that `--in-flight` accepts.
pub const CDC_PUBLISHES_IN_FLIGHT_MAX: usize = 32_768;

/// Pages read from a replica and waiting to be published, per group.
pub const CDC_SOURCE_PAGES_QUEUED_MAX: usize = 4;

/// First wait before trying again after a failure (a replica or the broker unreachable, a
/// race lost to another publisher); doubled on each failure in a row up to the maximum.
pub const CDC_RETRY_BACKOFF_MS_INITIAL: u64 = 50;

/// Longest wait between two tries.
pub const CDC_RETRY_BACKOFF_MS_MAX: u64 = 2_000;

/// How long the broker has to answer a JetStream request or acknowledge a publish.
pub const CDC_NATS_REQUEST_SECONDS_MAX: u64 = 10;

/// The broker's duplicate window of a stream the publisher creates, by default
/// (`--duplicate-window-seconds`): a message id seen within it is answered `duplicate`.
pub const CDC_DUPLICATE_WINDOW_SECONDS_DEFAULT: u64 = 120;

/// Longest duplicate window `--duplicate-window-seconds` accepts (a day).
pub const CDC_DUPLICATE_WINDOW_SECONDS_MAX: u64 = 86_400;

/// How often a publisher that made progress logs it.
pub const CDC_PROGRESS_LOG_SECONDS: u64 = 5;

/// Largest message the publisher sends: the JSON event and its headers (the message id and
/// the expected last sequence, under 200 bytes). NATS's default `max_payload` is 1 MiB.
pub const CDC_MESSAGE_BYTES_MAX: usize = EVENT_JSON_BYTES_MAX + 256;
// The projector (`fincore project`): change events into SQL read models.

/// Event pages read ahead of the database writer, per group (each at most
/// `PROJECTOR_PAGE_EVENTS_MAX` events); a full queue stops reading until the writer catches up.
pub const PROJECTOR_PAGES_QUEUED_MAX: usize = 8;

/// Events of whole batches a back-fill gathers before passing them on to the writer. A gap
/// (messages deleted from a JetStream stream, a purged stream, an offset far behind) may span
/// millions of events, decided by the network, not by us: read whole, it would be held in
/// memory at once and written in one transaction. Read this many at a time (then on to the
/// next batch marker), it costs what a transaction does: one is written while the next is read.
pub const PROJECTOR_BACKFILL_CHUNK_EVENTS: usize = PROJECTOR_TRANSACTION_EVENTS_MAX;

/// Most events one page to the writer holds: a page read (`EVENTS_PAGE_EVENTS_MAX`), or a
/// back-filled chunk with the events of the page around it (a chunk is passed on at the first
/// batch marker past `PROJECTOR_BACKFILL_CHUNK_EVENTS`, or past the longest batch without one).
pub const PROJECTOR_PAGE_EVENTS_MAX: usize =
    PROJECTOR_BACKFILL_CHUNK_EVENTS + PROJECTOR_BATCH_EVENTS_MAX + EVENTS_PAGE_EVENTS_MAX;

/// Events of whole batches written in one database transaction (with their offset). A batch
/// is never split: one larger than this is written alone.
pub const PROJECTOR_TRANSACTION_EVENTS_MAX: usize = 32_768;

/// Most events one batch can have, its marker included: every event of a full batch, every
/// expiry due before it, and the marker. A longer batch is refused as a broken stream.
pub const PROJECTOR_BATCH_EVENTS_MAX: usize = BATCH_EVENTS_MAX + BATCH_EXPIRIES_MAX + 1;

/// Rows in one multi-row SQLite statement (SQLite binds at most 32,766 values a statement).
pub const PROJECTOR_SQLITE_ROWS_PER_STATEMENT_MAX: usize = 1_000;

/// Columns of the widest read-model row (`transfers`: the transfer's 13 fields and `state`).
pub const PROJECTOR_ROW_COLUMNS_MAX: usize = 14;

/// Values SQLite binds in one statement (its `SQLITE_MAX_VARIABLE_NUMBER` since 3.32).
pub const PROJECTOR_SQLITE_VARIABLES_MAX: usize = 32_766;

/// Ids `--verify` looks up in one call.
pub const PROJECTOR_VERIFY_IDS_PER_LOOKUP_MAX: usize = 4096;

/// Groups one projector follows.
pub const PROJECTOR_GROUPS_MAX: usize = 64;

/// Replicas named for one group.
pub const PROJECTOR_REPLICAS_PER_GROUP_MAX: usize = 16;

/// Longest wait between two attempts to reach a group's replicas (doubling from 100 ms).
pub const PROJECTOR_RETRY_BACKOFF_MS_MAX: u64 = 2_000;

/// How long `--verify` waits, by default, for the read model to reach the ledger's last event.
pub const PROJECTOR_VERIFY_WAIT_SECONDS_DEFAULT: u64 = 60;

// ---------------------------------------------------------------------------------------------
// Flow control (`flow`: rate limits, per-kind pools, switches in front of the client API).

/// Requests of one kind (writes, reads, admin) a front end serves at once unless its rules say
/// otherwise; beyond it requests queue. Far above what the pipeline needs to fill its batches
/// (the benchmark keeps a few dozen in flight), so the default only stops a flood.
pub const FLOW_IN_FLIGHT_DEFAULT: u32 = 1024;

/// Requests of one kind that may wait for a place in its pool, by default.
pub const FLOW_QUEUE_DEFAULT: u32 = 4096;

/// How long a request waits for a place in its pool, by default, before it is refused.
pub const FLOW_WAIT_MS_DEFAULT: u32 = 1_000;

/// Largest value any rule may give a pool's size or queue.
pub const FLOW_POOL_SIZE_MAX: u32 = 65_536;

/// Longest wait a rule may allow (for a pool or a rate limit): past it a request is refused.
pub const FLOW_WAIT_MS_MAX: u32 = 10_000;

/// Most rate-limit rules in one set.
pub const FLOW_LIMIT_RULES_MAX: usize = 1_024;

/// Highest rate a rule may set, in requests per second.
pub const FLOW_RATE_PER_SECOND_MAX: u32 = 10_000_000;

/// Largest burst a rule may allow (requests admitted at once above the rate).
pub const FLOW_BURST_MAX: u32 = 1_000_000;

/// Longest warm-up a rule may set, and the largest cold factor (the rate while cold is the
/// rate divided by it).
pub const FLOW_WARM_UP_SECONDS_MAX: u32 = 3_600;
pub const FLOW_COLD_FACTOR_MAX: u32 = 100;

/// Callers a per-caller rule (`"caller": "*"`) tracks one by one; callers beyond it share one
/// limiter (callers are API keys, so a keys file this large is already unusual).
pub const FLOW_CALLERS_TRACKED_MAX: usize = 10_000;

/// Longest caller name or API name a rule may hold.
pub const FLOW_NAME_BYTES_MAX: usize = 128;

/// Largest rules file read.
pub const FLOW_RULES_FILE_BYTES_MAX: u64 = 1 << 20;

/// Accounts a hot-account limit tracks at once (those whose time has passed are forgotten first;
/// past it, new accounts go untracked until room is made).
pub const FLOW_HOT_ACCOUNTS_TRACKED_MAX: usize = 100_000;

/// Largest call count a circuit breaker rule may name (`min_calls`, `error_count`,
/// `half_open_probes`).
pub const FLOW_BREAKER_CALLS_MAX: u32 = 1_000_000;

/// Longest time a circuit breaker rule may name (`slow_call_ms`, `open_ms`): 10 minutes.
pub const FLOW_BREAKER_MS_MAX: u32 = 600_000;

/// Longest window a circuit breaker counts calls over (one bucket per second).
pub const FLOW_BREAKER_WINDOW_SECONDS_MAX: u32 = 600;

/// Calls a pool under adaptive protection always admits, however little it served lately
/// (`pools.*.adaptive.min_in_flight` left out), so that it never shuts out everyone.
pub const FLOW_ADAPTIVE_MIN_IN_FLIGHT_DEFAULT: u32 = 8;

/// Longest latency target adaptive protection may name (`pools.*.adaptive.latency_ms`): 1 minute.
pub const FLOW_ADAPTIVE_LATENCY_MS_MAX: u32 = 60_000;

// ---------------------------------------------------------------------------------------------
// Service registry (`registry`, docs/registry.md).

/// Longest part of a registry data key (instance id, group, data id), a zone, a client id, a
/// registration id or a subscription id.
pub const REGISTRY_NAME_BYTES_MAX: usize = 128;

/// Longest address a publisher may publish.
pub const REGISTRY_ADDRESS_BYTES_MAX: usize = 256;

/// Most attributes one published record may carry.
pub const REGISTRY_ATTRIBUTES_MAX: usize = 32;

/// Longest attribute key or value.
pub const REGISTRY_ATTRIBUTE_BYTES_MAX: usize = 256;

/// Largest client message a registry decodes (a registration at its limits is about 17 KiB).
pub const REGISTRY_CLIENT_MESSAGE_BYTES_MAX: usize = 64 << 10;

/// Most publishers one data key may hold (the seed's largest application has 8,000 instances
/// per data id): bounds one push, and what one key's change costs.
pub const REGISTRY_PUBLISHERS_PER_KEY_MAX: usize = 20_000;

/// Most registrations one stream may hold (a benchmark multiplexes many publishers on one).
pub const REGISTRY_REGISTRATIONS_PER_STREAM_MAX: usize = 1_000_000;

/// Most subscriptions one stream may hold.
pub const REGISTRY_SUBSCRIPTIONS_PER_STREAM_MAX: usize = 100_000;

/// Largest xDS discovery request the registry reads (Envoy puts its node, 10-25 KB, in each
/// request unless told otherwise, and every cluster name it wants).
pub const REGISTRY_XDS_REQUEST_BYTES_MAX: usize = 4 << 20;

/// Most config keys one registry stream may watch (the config center holds at most as many).
pub const REGISTRY_WATCHES_PER_STREAM_MAX: usize = CONFIG_KEYS_MAX;

/// Most data keys one registry holds (a key stays, with its version, once its last publisher
/// leaves, so that a subscriber sees versions only grow).
pub const REGISTRY_KEYS_MAX: usize = 1_000_000;

/// Most publishers one registry holds.
pub const REGISTRY_PUBLISHERS_MAX: usize = 20_000_000;

/// Most client streams one registry serves at once (one more is refused RESOURCE_EXHAUSTED).
pub const REGISTRY_STREAMS_MAX: usize = 10_000;

/// Largest push payload uncompressed: a full key of publishers at their limits would be more,
/// so a record is refused when its key's set would pass this (a client decompresses no more).
pub const REGISTRY_PUSH_PLAIN_BYTES_MAX: usize = 24 << 20;

/// Largest server message a registry client decodes (a push, compressed or not).
pub const REGISTRY_SERVER_MESSAGE_BYTES_MAX: usize = REGISTRY_PUSH_PLAIN_BYTES_MAX + (1 << 20);

/// Messages queued toward one client stream (answers and pushes); pushes beyond it wait as
/// marks, one per subscription, that always send the newest version.
pub const REGISTRY_STREAM_QUEUE_MESSAGES: usize = 256;

/// Bytes of pushes queued toward one client stream and not yet taken by it: a client that
/// reads slowly holds at most this much (a push larger than it waits for the whole budget).
pub const REGISTRY_STREAM_QUEUE_BYTES_MAX: usize = 64 << 20;

/// How long a drained host's registrations are refused when the drain names no time.
pub const REGISTRY_DRAIN_HOLD_SECONDS_DEFAULT: u64 = 300;

/// Longest time a drain may refuse a host's registrations.
pub const REGISTRY_DRAIN_HOLD_SECONDS_MAX: u64 = 86_400;

/// A push not acknowledged within this long is sent again.
pub const REGISTRY_PUSH_ACK_MS_MAX: u64 = 2_000;

/// Times one version of a push is sent again before it is left to the next reconciliation.
pub const REGISTRY_PUSH_RETRIES_MAX: u32 = 3;

/// How often every subscription's acknowledged version is compared with its key's version.
pub const REGISTRY_RECONCILE_SECONDS_DEFAULT: u64 = 10;

/// Payload bytes (plain and compressed) the registry keeps cached before it drops them all.
pub const REGISTRY_PAYLOAD_CACHE_BYTES_MAX: usize = 1 << 30;

// ---------------------------------------------------------------------------------------------
// How the limits relate. Each fails the build if a change to one limit breaks another.

// A full batch fits one journal record (inside the Raft entry that carries it).
const _: () = assert!(BATCH_BYTES_MAX <= JOURNAL_RECORD_BODY_BYTES_MAX);
// A full Raft entry is one journal record (the log store journals entries as they are).
const _: () = assert!(RAFT_ENTRY_BYTES_MAX <= JOURNAL_RECORD_BODY_BYTES_MAX);
// A group commit can always take at least one full record, so no record waits forever.
const _: () = assert!(JOURNAL_GROUP_BYTES_MAX >= JOURNAL_RECORD_BODY_BYTES_MAX);
const _: () = assert!(JOURNAL_GROUP_RECORDS_MAX >= 1 && JOURNAL_QUEUE_RECORDS_MAX >= 1);
// A whole queue of records fits one group's record count, so a drained queue is one fsync.
const _: () = assert!(JOURNAL_QUEUE_RECORDS_MAX <= JOURNAL_GROUP_RECORDS_MAX);
// A segment holds at least one full record.
const _: () = assert!(JOURNAL_SEGMENT_BYTES_MAX_DEFAULT >= JOURNAL_RECORD_BODY_BYTES_MAX as u64);
// A full AppendEntries message fits the peer transport.
const _: () =
    assert!(RAFT_APPEND_ENTRIES_MAX as usize * RAFT_ENTRY_BYTES_MAX <= PEER_MESSAGE_BYTES_MAX);
const _: () = assert!(LEDGER_APPLY_JOBS_QUEUED_MAX >= 1);
// Entries behind a snapshot fit in the log cache, so catching up from them reads no disk.
const _: () =
    assert!(RAFT_LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES as usize <= RAFT_LOG_CACHED_ENTRIES_MAX);
// A snapshot offer (its header and the sender's vote) fits one peer message.
const _: () = assert!(2 * SNAPSHOT_HEADER_BYTES_MAX <= PEER_MESSAGE_BYTES_MAX);
// A snapshot chunk and its envelope fit a peer message, and the chunks queued at a receiver
// fit one HTTP/2 stream window.
const _: () = assert!(PEER_SNAPSHOT_CHUNK_BYTES + 64 <= PEER_MESSAGE_BYTES_MAX);
const _: () = assert!(
    PEER_SNAPSHOT_CHUNK_BYTES * PEER_SNAPSHOT_CHUNKS_QUEUED_MAX
        <= HTTP2_STREAM_WINDOW_BYTES as usize
);
const _: () = assert!(PEER_SNAPSHOT_CHUNKS_QUEUED_MAX >= 1 && PEER_SNAPSHOT_RECEPTIONS_MAX >= 1);
const _: () =
    assert!(PEER_TRANSFER_RATE_BYTES_PER_SECOND_MIN > 0 && SNAPSHOT_STEP_RECORDS_MAX >= 1);
// The longest snapshot's timeout fits in a u64 of milliseconds.
const _: () = assert!(
    SNAPSHOT_BYTES_MAX / PEER_TRANSFER_RATE_BYTES_PER_SECOND_MIN
        < u64::MAX / 1000 - PEER_SNAPSHOT_TIMEOUT_BASE_MS
);
// gRPC's length prefix is 32 bits; tonic refuses anything larger.
const _: () = assert!(PEER_MESSAGE_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(GRPC_MESSAGE_BYTES_MAX <= u32::MAX as usize);
// A full packed batch fits one gRPC message.
const _: () = assert!(
    BATCH_EVENTS_MAX * EVENT_BYTES + GRPC_REQUEST_OVERHEAD_BYTES_MAX <= GRPC_MESSAGE_BYTES_MAX
);
// A full message-encoded batch (and a full query answer) fits one gRPC message.
const _: () = assert!(
    BATCH_EVENTS_MAX * GRPC_EVENT_BYTES_MAX + GRPC_REQUEST_OVERHEAD_BYTES_MAX
        <= GRPC_MESSAGE_BYTES_MAX
);
const _: () = assert!(QUERY_ROWS_MAX <= BATCH_EVENTS_MAX && LOOKUP_IDS_MAX <= BATCH_EVENTS_MAX);
const _: () = assert!(QUERY_ROWS_DEFAULT >= 1 && QUERY_ROWS_DEFAULT <= QUERY_ROWS_MAX);
// A full batch of compact JSON events (with the brackets and commas) fits the HTTP body cap.
const _: () = assert!(BATCH_EVENTS_MAX * (JSON_EVENT_BYTES_MAX + 1) + 2 <= HTTP_BODY_BYTES_MAX);
// A full packed batch goes out in one HTTP/2 stream window, and a connection carries a stream.
const _: () = assert!(BATCH_BYTES_MAX <= HTTP2_STREAM_WINDOW_BYTES as usize);
const _: () = assert!(HTTP2_STREAM_WINDOW_BYTES <= HTTP2_CONNECTION_WINDOW_BYTES);
// HTTP/2 windows are at most 2^31 - 1 bytes (RFC 9113, 6.9.1).
const _: () = assert!(HTTP2_CONNECTION_WINDOW_BYTES < 1 << 31);
// One batch's expiries, events and timestamps fit the ledger's 31-bit transfer indexes.
const _: () = assert!((BATCH_EVENTS_MAX + BATCH_EXPIRIES_MAX) as u64 <= LEDGER_TRANSFERS_MAX);
const _: () = assert!(LEDGER_TRANSFERS_MAX < 1 << 31 && LEDGER_ACCOUNTS_MAX <= u32::MAX as u64);
const _: () = assert!(LEDGER_MEMORY_PERCENT_DEFAULT > 0 && LEDGER_MEMORY_PERCENT_DEFAULT <= 100);
const _: () = assert!(LEDGER_ACCOUNTS_MEMORY_PERCENT_DEFAULT < 100);
// The node's queue default is within what `--queue-depth` accepts.
const _: () = assert!(
    SERVER_QUEUE_REQUESTS_DEFAULT >= 1
        && SERVER_QUEUE_REQUESTS_DEFAULT <= SERVER_QUEUE_REQUESTS_MAX
);
const _: () =
    assert!(SERVER_BATCHES_IN_FLIGHT_MAX >= 1 && SERVER_BATCHES_IN_FLIGHT_MAX <= u32::MAX as usize);
// The client's queue of singles holds at least one full batch, so its batches can be full.
const _: () = assert!(CLIENT_PENDING_SINGLES_MAX >= BATCH_EVENTS_MAX);
const _: () =
    assert!(SERVER_READS_RUNNING_MAX >= 1 && SERVER_READS_RUNNING_MAX <= SERVER_READS_ADMITTED_MAX);
const _: () = assert!(CLIENT_SINGLE_BATCHES_IN_FLIGHT_MAX >= 1);
const _: () = assert!(CLIENT_GAVE_UP_ERRORS_REPORTED_MAX >= 1);
const _: () = assert!(GATEWAY_GROUP_QUEUE_PARTS_MAX >= 1 && GATEWAY_GROUP_CALLS_IN_FLIGHT_MAX >= 1);
const _: () = assert!(
    GATEWAY_EVENTS_RESUBSCRIBES_MAX >= 1
        && GATEWAY_EVENTS_RESUBSCRIBE_BACKOFF_MS_INITIAL >= 1
        && GATEWAY_EVENTS_RESUBSCRIBE_BACKOFF_MS_INITIAL
            <= GATEWAY_EVENTS_RESUBSCRIBE_BACKOFF_MS_MAX
);
const _: () = assert!(
    GATEWAY_GROUP_CALL_SECONDS_MAX >= 2
        && GATEWAY_GROUP_CALL_SECONDS_MAX < HTTP_REQUEST_SECONDS_MAX
);
const _: () = assert!(
    GATEWAY_SAGA_DEADLINE_MS_DEFAULT <= GATEWAY_SAGA_DEADLINE_MS_MAX
        && GATEWAY_SAGA_DEADLINE_MS_MAX < HTTP_REQUEST_SECONDS_MAX * 1_000
        && (OUTCOME_WAIT_MS_MAX as u64) < HTTP_REQUEST_SECONDS_MAX * 1_000
        && GATEWAY_SAGA_OPEN_SECONDS_MAX > 3 * GATEWAY_GROUP_CALL_SECONDS_MAX
        && GATEWAY_SAGA_RESOLVE_PERIOD_SECONDS >= 1
        && GATEWAY_SAGA_RESOLVE_COPIES_MAX <= BATCH_EVENTS_MAX
);
// A local group's ports sit 100 × g above the gateway's, below 65,536 from a port near 10,000.
const _: () = assert!(LOCAL_GROUPS_MAX >= 1 && LOCAL_GROUPS_MAX * 100 < 10_000);
// A full keys file (each key: id, name, role and digest, under 200 bytes of JSON) fits the cap.
const _: () =
    assert!(API_KEYS_MAX as u64 * (API_KEY_NAME_BYTES_MAX as u64 + 136) <= API_KEYS_FILE_BYTES_MAX);
const _: () = assert!(API_KEY_SECRET_BYTES >= 16);
// Event files: whole records, at least two files kept, a page fits a response and a message.
const _: () = assert!(EVENT_LOG_SEGMENT_EVENTS.is_multiple_of(EVENT_LOG_INDEX_EVERY_EVENTS));
// A file's positions fit in the 4 bytes the index keeps for each.
const _: () =
    assert!(EVENT_LOG_SEGMENT_EVENTS * EVENT_LOG_RECORD_BYTES_MAX as u64 <= u32::MAX as u64);
const _: () = assert!(
    EVENT_LOG_BYTES_MAX >= 2 * EVENT_LOG_SEGMENT_EVENTS * EVENT_LOG_RECORD_BYTES_MAX as u64
);
const _: () = assert!(EVENT_LOG_BATCHES_QUEUED_MAX >= 1);
const _: () = assert!(
    EVENTS_PAGE_EVENTS_DEFAULT >= 1 && EVENTS_PAGE_EVENTS_DEFAULT <= EVENTS_PAGE_EVENTS_MAX
);
const _: () =
    assert!(EVENTS_PAGE_EVENTS_MAX * (EVENT_JSON_BYTES_MAX + 1) + 64 <= HTTP_BODY_BYTES_MAX);
const _: () = assert!(
    EVENTS_PAGE_EVENTS_MAX * EVENT_PROTO_BYTES_MAX + GRPC_REQUEST_OVERHEAD_BYTES_MAX
        <= GRPC_MESSAGE_BYTES_MAX
);
const _: () = assert!(
    EVENTS_READS_RUNNING_MAX >= 1
        && EVENTS_SUBSCRIBERS_MAX >= 1
        && EVENTS_SUBSCRIBE_PAGES_QUEUED_MAX >= 1
        && EVENTS_SUBSCRIBER_STALL_SECONDS_MAX >= 1
);
// The CDC publisher: a bounded window, a queue of at least one page, backoff that grows, and
// a message far under NATS's default 1 MiB `max_payload`.
const _: () = assert!(
    CDC_PUBLISHES_IN_FLIGHT_DEFAULT >= 1
        && CDC_PUBLISHES_IN_FLIGHT_DEFAULT <= CDC_PUBLISHES_IN_FLIGHT_MAX
        && CDC_SOURCE_PAGES_QUEUED_MAX >= 1
        && CDC_RETRY_BACKOFF_MS_INITIAL >= 1
        && CDC_RETRY_BACKOFF_MS_INITIAL <= CDC_RETRY_BACKOFF_MS_MAX
        && CDC_DUPLICATE_WINDOW_SECONDS_DEFAULT >= 1
        && CDC_DUPLICATE_WINDOW_SECONDS_DEFAULT <= CDC_DUPLICATE_WINDOW_SECONDS_MAX
        && CDC_GROUPS_MAX >= 1
        && CDC_GROUP_REPLICAS_MAX >= 1
        && CDC_MESSAGE_BYTES_MAX <= 1 << 20
);
// Projector: a multi-row SQLite statement binds what SQLite allows, a whole batch fits the
// read-ahead queue's pages many times over, lookups stay within the node's limit.
const _: () = assert!(
    PROJECTOR_SQLITE_ROWS_PER_STATEMENT_MAX * PROJECTOR_ROW_COLUMNS_MAX
        <= PROJECTOR_SQLITE_VARIABLES_MAX
);
const _: () = assert!(PROJECTOR_TRANSACTION_EVENTS_MAX >= EVENTS_PAGE_EVENTS_MAX);
// A back-filled chunk is written about as one transaction, never many chunks in one.
const _: () = assert!(
    PROJECTOR_BACKFILL_CHUNK_EVENTS >= EVENTS_PAGE_EVENTS_MAX
        && PROJECTOR_BACKFILL_CHUNK_EVENTS <= PROJECTOR_TRANSACTION_EVENTS_MAX
);
const _: () = assert!(PROJECTOR_PAGES_QUEUED_MAX >= 1 && PROJECTOR_GROUPS_MAX >= 1);
const _: () = assert!(PROJECTOR_VERIFY_IDS_PER_LOOKUP_MAX <= LOOKUP_IDS_MAX);
// Keys below admin leave room for the gateways and nodes, and one such key for the others.
const _: () = assert!(META_WATCHERS_PER_KEY_MAX < META_WATCHERS_BELOW_ADMIN_MAX);
const _: () = assert!(META_WATCHERS_BELOW_ADMIN_MAX < META_WATCHERS_MAX);
// Flow control: defaults within the maxima, a default wait a caller's deadline outlives.
const _: () = assert!(
    FLOW_IN_FLIGHT_DEFAULT >= 1
        && FLOW_IN_FLIGHT_DEFAULT <= FLOW_POOL_SIZE_MAX
        && FLOW_QUEUE_DEFAULT <= FLOW_POOL_SIZE_MAX
        && FLOW_WAIT_MS_DEFAULT <= FLOW_WAIT_MS_MAX
        && (FLOW_WAIT_MS_MAX as u64) < HTTP_REQUEST_SECONDS_MAX * 1_000
        && FLOW_ADAPTIVE_MIN_IN_FLIGHT_DEFAULT >= 1
        && FLOW_ADAPTIVE_MIN_IN_FLIGHT_DEFAULT <= FLOW_POOL_SIZE_MAX
);
// Registry: a record at its limits fits a client message, a full key fits a push, and a client
// decodes any push.
const _: () = assert!(
    REGISTRY_ADDRESS_BYTES_MAX
        + REGISTRY_ATTRIBUTES_MAX * 2 * REGISTRY_ATTRIBUTE_BYTES_MAX
        + 8 * REGISTRY_NAME_BYTES_MAX
        + 1024
        <= REGISTRY_CLIENT_MESSAGE_BYTES_MAX
);
const _: () = assert!(REGISTRY_SERVER_MESSAGE_BYTES_MAX > REGISTRY_PUSH_PLAIN_BYTES_MAX);
const _: () = assert!(REGISTRY_PUSH_RETRIES_MAX >= 1 && REGISTRY_STREAM_QUEUE_MESSAGES >= 2);
const _: () = assert!(
    REGISTRY_STREAM_QUEUE_BYTES_MAX <= u32::MAX as usize
        && REGISTRY_DRAIN_HOLD_SECONDS_DEFAULT <= REGISTRY_DRAIN_HOLD_SECONDS_MAX
);
