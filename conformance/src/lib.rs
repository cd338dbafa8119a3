#![doc = include_str!("../README.md")]

pub mod crash;
mod harness;
mod run;
pub mod scenarios;
mod support;
pub mod witness;
pub mod zombie;

pub use harness::{Expected, Harness, MemoryHarness, Outcome, Timing, memory_expected, server_from_env};
pub use run::run_scenario;
pub use support::{Ctx, Members, drain, drain_quiet};

/// Calls `$callback!(($($args)*) scenario, scenario, ...)` with every scenario name:
/// the single list the suite and [`SCENARIOS`] are made from.
#[doc(hidden)]
#[macro_export]
macro_rules! __for_each_scenario {
    ($callback:ident ! ($($args:tt)*)) => {
        $crate::$callback! {
            ($($args)*)
            send_and_receive_roundtrip,
            binary_and_empty_payloads,
            json_values_roundtrip,
            headers_roundtrip_with_odd_unicode,
            timestamps_are_kept,
            batch_deliveries_match_reads,
            enqueued_records_keep_key_order_and_handles_match_reads,
            flush_and_close_wait_for_enqueued_records,
            bad_enqueued_record_fails_alone,
            enqueue_waits_for_buffer_room,
            same_key_same_partition_in_order,
            explicit_partition_is_honoured,
            broadcast_readers_each_see_everything,
            groups_each_see_everything,
            group_members_split_partitions,
            member_joining_takes_partitions_nothing_lost,
            revoked_partitions_commit_acknowledged_records,
            member_leaving_hands_over_partitions,
            dropped_member_uncommitted_records_redelivered,
            checkpoint_capture_resumes_at_first_unacked,
            committed_position_never_moves_backwards,
            resume_after_close_between_batches,
            concurrent_close_of_many_consumers,
            producer_close_keeps_acknowledged_records,
            streams_are_isolated,
            start_earliest_and_latest,
            start_at_and_after_offset,
            start_from_timestamp,
            seek_rewinds_and_skips,
            poll_timeout_returns_empty,
            poll_is_cancel_safe,
            into_stream_yields_records,
            missing_stream_is_not_found,
            use_after_close_is_closed,
            create_twice_is_already_exists,
            describe_reports_partitions,
            delete_removes_stream_and_records,
            partition_count_change_is_picked_up,
            oversize_record_is_invalid_input,
            ack_and_commit_of_unassigned_partition_refused,
            per_key_order_with_several_members,
            invalid_names_are_rejected,
            broadcast_consumer_cannot_commit,
            reopen_keeps_records_and_commits,
            processor_keeps_key_order_under_concurrency,
            processor_dead_letters_a_poison_record_on_another_engine,
            processor_without_dead_letter_stream_stops_on_a_record_given_up,
            processor_pauses_polling_at_its_buffer_bound,
            processor_shutdown_abandons_handlers_past_its_deadline,
            processor_dead_letters_a_record_that_does_not_decode,
            processor_refuses_a_broadcast_consumer,
            processor_retries_a_panicking_handler,
            processor_members_join_and_leave_with_work_in_flight,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __suite_tests {
    (($harness:expr) $($name:ident,)*) => {
        $(
            #[test]
            fn $name() {
                $crate::run_scenario(stringify!($name), || $harness, $crate::scenarios::$name);
            }
        )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __scenario_names {
    (() $($name:ident,)*) => {
        /// The name of every scenario, in suite order.
        pub const SCENARIOS: &[&str] = &[$(stringify!($name)),*];
    };
}

/// Expands to one `#[test]` per scenario, each running against a fresh
/// [`Harness`] made by evaluating `$harness`.
///
/// ```
/// // In a backend's tests/conformance.rs, with that backend's harness:
/// tributary_conformance::suite!(tributary_conformance::MemoryHarness::default());
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! suite {
    ($harness:expr) => {
        $crate::__for_each_scenario!(__suite_tests!($harness));
    };
}

__for_each_scenario!(__scenario_names!());
