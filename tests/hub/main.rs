//! Integration tests of the `aymc-hub` binary against `PROTOCOL.md`.
//!
//! Each test starts its own hub process on `127.0.0.1:0` (see `support`),
//! talks to it over real loopback sockets with real signed JWTs, and asserts
//! the exact codes, messages and shapes the protocol fixes. One file per area:
//!
//! - `connect`: the upgrade, token sources and every refusal of section 1
//! - `compression`: permessage-deflate (section 1, "Compression"): negotiation, compressed frames both ways, bombs
//! - `keys`: RS256 / ES256 / EdDSA public keys
//! - `subscribe`: subscribe, unsubscribe, ping, message errors, rate limits
//! - `broadcast`: the publish API and what subscribers receive (5, 8)
//! - `limits`: keep-alive, frame-level closes, slow clients, drops (5, 6)
//! - `ops`: running as a systemd service: secret files and credentials, notify, log formats, `--help`
//! - `packaging`: the units in `deploy/` (settings, `systemd-analyze`), the shipped configs, `scripts/install`
//! - `expiry`: `TOKEN_EXPIRING`, `4001`, in-band `auth` (1, 4, 5b)
//! - `http_api`: `/healthz`, `/api/v1/stats`, `/metrics`, HTTP errors (1, 9)
//! - `faults`: out of descriptors, a 10,000-connection storm, a restart under recovering clients
//! - `hardening`: what one client may cost everybody (caps in bytes and time), the cookie rule
//! - `shutdown`: SIGTERM / SIGINT (10)
//! - `proxies`: `trusted_proxies`, `X-Forwarded-For`, PROXY protocol headers (1)
//! - `config_cli`: `check-config`, `token`, env and flag precedence
//! - `agent_link`: the gRPC agent link against an in-process fake agent
//! - `agent_faults`: agents whose offsets go back, die mid-burst or never answer
//! - `agent_trust`: `[[servers]] agent`: which agent may speak for which server
//! - `history`: `since` recovery, `history` paging, bounded rings (5a)
//! - `disk`: on-disk history: restarts, SIGKILL, full disk, broken file, stored logs endpoint
//! - `end_to_end`: aymc-agent + aymc-hub + a client, lines appended to a log file
//! - `walkthrough`: the seed's manual tests 1-8 as PROTOCOL.md adapts them
//! - `console`: what the web console needs: metrics `history`, `GET /api/v1/servers`, the embedded files
//! - `extremes`: slow stored-log queries, out-of-range config values, token times at the integers' ends
//! - `alerts`: alert rules (a crash-looping demo server behind aymc-agent, user rules), webhooks against `recorder`

mod fake_agent;
mod recorder;
mod support;

mod agent_faults;
mod agent_link;
mod agent_trust;
mod alerts;
mod broadcast;
mod compression;
mod config_cli;
mod connect;
mod console;
mod disk;
mod end_to_end;
mod expiry;
mod extremes;
mod faults;
mod hardening;
mod history;
mod http_api;
mod keys;
mod limits;
mod metrics_history;
mod ops;
mod packaging;
mod proto_hardening;
mod proxies;
mod shutdown;
mod subscribe;
mod walkthrough;
