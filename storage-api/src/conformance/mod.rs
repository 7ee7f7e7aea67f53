//! The conformance suite: the behavioural contract of [`Backend`](crate::Backend), run by every engine.
//!
//! Each case is a generic function `fn case<B: Backend>()` that panics on a violation.
//! A backend crate stamps the whole suite into its tests with one line, in
//! `tests/conformance.rs`:
//!
//! ```ignore
//! storage_api::conformance_tests!(backend_sled::SledBackend);
//! ```
//!
//! which generates one `#[test]` per case inside a module `conformance`, so a failure reads
//! `conformance::scan_prefix_edge_table` in the output of the crate that names its backend.
//! New behaviour is added here, as a new case, never to one backend only.
//!
//! Every case opens the backend on a fresh temporary directory with
//! [`Fixture::config`] (a 16 MiB cache, buffered durability) unless it tests a setting.

mod cases;
mod fixture;
pub mod online_defrag;

pub use cases::*;
pub use fixture::Fixture;

/// Stamps every conformance case as a `#[test]` for the given backend type.
///
/// ```ignore
/// storage_api::conformance_tests!(backend_redb::RedbBackend);
/// ```
///
/// To stamp the suite twice in one file, name the module:
/// `storage_api::conformance_tests!(faulty: FaultyBackend<MemoryBackend>);`.
#[macro_export]
macro_rules! conformance_tests {
    ($backend:ty) => {
        $crate::conformance_tests!(conformance: $backend);
    };
    ($module:ident : $backend:ty) => {
        $crate::conformance_tests!(@cases $module $backend;
            put_get_roundtrip,
            get_missing_is_none,
            get_many_matches_get,
            overwrite_replaces_value,
            delete_removes_key,
            delete_absent_is_ok,
            trees_are_isolated,
            empty_key_and_empty_value,
            binary_keys_and_values,
            large_value_round_trips,
            batch_put_applies_all,
            batch_delete_removes_all,
            write_batch_spans_trees,
            write_batch_later_op_wins,
            write_empty_batch_is_noop,
            scan_half_open_bounds,
            scan_unbounded_end,
            scan_empty_and_inverted_ranges,
            scan_limit,
            scan_orders_unsigned_bytes,
            scan_prefix_edge_table,
            scan_prefix_limit,
            persists_across_close_and_reopen,
            sync_durability_persists,
            operations_after_close_fail,
            open_rejects_foreign_directories,
            snapshot_restore_round_trip,
            snapshot_is_canonical_across_engines,
            snapshot_to_matches_snapshot,
            restore_from_memory_and_into_memory,
            restore_empty_snapshot_clears_everything,
            restore_persists_across_reopen,
            restore_rejects_garbage_and_keeps_data,
            restore_rejects_truncated_and_keeps_data,
            restore_rejects_bit_flips_and_keeps_data,
            restore_rejects_wrong_version_and_keeps_data,
            concurrent_batches_are_never_partial,
            concurrent_writers_do_not_lose_writes,
            size_defragment_and_compact_keep_content,
            defragment_under_concurrent_load,
            model_random_operations_with_reopen,
        );
    };
    (@cases $module:ident $backend:ty; $($case:ident),* $(,)?) => {
        /// The shared storage-api conformance suite for this backend.
        mod $module {
            $(
                #[test]
                fn $case() {
                    $crate::conformance::$case::<$backend>();
                }
            )*
        }
    };
}
