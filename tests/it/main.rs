//! End-to-end tests: real nats-server processes, the simulator speaking the real
//! gateway protocol, real HTTP on loopback. One binary so they share one link.

mod cluster;
mod compat;
mod compression;
mod dev;
mod durability;
mod faults;
mod identity;
mod ingest_backpressure;
mod ingest_bench;
mod ingest_health;
mod ingest_recovery;
mod interactions;
mod interactions_bench;
mod interactions_handlers;
mod interactions_processes;
mod interactions_resilience;
mod interactions_sim;
mod leaks;
mod leaks_full_run;
mod nats_auth;
mod sinks_amqp;
mod sinks_bench;
mod sinks_config;
mod sinks_discord;
mod sinks_dlq;
mod sinks_driver;
mod sinks_http;
mod sinks_lost_ack;
mod sinks_nats;
mod sinks_process;
mod sinks_tail;
mod skeleton;
mod soak;
mod traces;
mod traces_bench;
