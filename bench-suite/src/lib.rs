//! # bench-suite
//!
//! Side-by-side comparison of rusd's storage engines on the machine it runs on:
//! throughput, latency, memory and disk of every compiled engine, through the raw
//! [`storage_api::Backend`] trait and through `mvcc_core::MvccStore`.
//!
//! The `rusd-bench` binary runs each engine in its own fresh worker process with the same
//! fixed-seed workload ([`workload`]), the same cache budget and the same durability, then
//! prints a Markdown table and writes `results.json` and `chart.svg` ([`report`]).
//!
//! With the `etcd` cargo feature (needs the system `protoc` for the `etcd-client` crate) it
//! also drives any etcd v3 endpoint with concurrent clients (`load`) and compares `rusd` on
//! every engine with a real etcd side by side ([`versus`]).
#![deny(missing_docs)]

pub mod defrag_load;
pub mod index_mem;
#[cfg(feature = "etcd")]
pub mod load;
pub mod measure;
pub mod mvcc_workload;
pub mod report;
pub mod versus;
pub mod workload;
