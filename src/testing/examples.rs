//! Valid examples of the built-in events, for demos, tests and benchmarks.

use crate::{
    event::Event,
    events::{utc, *},
};

/// A valid example of an event type, for demos and tests.
///
/// ```
/// use fitviz_events::{events::WorkoutCreated, testing::Example};
///
/// let workout = WorkoutCreated::example();
/// assert_eq!(workout.workout_id, "wo_7f3a9c2e");
/// ```
pub trait Example {
    /// A valid value.
    fn example() -> Self;
}

/// One valid [`Event`] of each built-in type (their [`Example`]s), in the order of
/// [`BUILTIN_EVENT_TYPES`](crate::events::BUILTIN_EVENT_TYPES).
///
/// ```
/// let events = fitviz_events::testing::examples();
/// assert_eq!(events.len(), 11);
/// assert_eq!(events[10].event_type(), "class.cancelled");
/// ```
pub fn examples() -> Vec<Event> {
    vec![
        Event::new(WorkoutCreated::example()),
        Event::new(WorkoutUpdated::example()),
        Event::new(WorkoutDeleted::example()),
        Event::new(BookingConfirmed::example()),
        Event::new(BookingCancelled::example()),
        Event::new(MembershipCreated::example()),
        Event::new(MembershipExpired::example()),
        Event::new(PaymentCompleted::example()),
        Event::new(PaymentFailed::example()),
        Event::new(ClassScheduled::example()),
        Event::new(ClassCancelled::example()),
    ]
}

impl Example for WorkoutCreated {
    /// A valid example: a 45-minute strength session.
    fn example() -> Self {
        Self {
            workout_id: "wo_7f3a9c2e".to_owned(),
            title: Some("Morning strength".to_owned()),
            member_id: Some("mem_1042".to_owned()),
            workout_type: Some("strength".to_owned()),
            duration_minutes: Some(45),
            calories: Some(380),
            started_at: Some(utc(2026, 3, 2, 7, 30)),
        }
    }
}

impl Example for WorkoutCreatedV2 {
    /// A valid example: the same session as [`WorkoutCreated`]'s, as version 2.
    fn example() -> Self {
        WorkoutCreated::example().into()
    }
}

/// One valid [`Event`] of every registered version of every built-in type:
/// [`examples`] and the versions other than the current one
/// ([`WorkoutCreatedV2`]).
///
/// ```
/// let events = fitviz_events::testing::versioned_examples();
/// assert_eq!(events.len(), 12);
/// assert!(events.iter().any(|e| e.event_type() == "workout.created" && e.version() == 2));
/// ```
pub fn versioned_examples() -> Vec<Event> {
    let mut events = examples();
    events.insert(1, Event::new(WorkoutCreatedV2::example()));
    events
}

impl Example for WorkoutUpdated {
    /// A valid example: the duration and calories of a workout were corrected.
    fn example() -> Self {
        Self {
            workout_id: "wo_7f3a9c2e".to_owned(),
            member_id: Some("mem_1042".to_owned()),
            title: None,
            changed_fields: vec!["duration_minutes".to_owned(), "calories".to_owned()],
            duration_minutes: Some(50),
        }
    }
}

impl Example for WorkoutDeleted {
    /// A valid example: a workout logged twice by mistake.
    fn example() -> Self {
        Self {
            workout_id: "wo_7f3a9c2e".to_owned(),
            member_id: Some("mem_1042".to_owned()),
            reason: Some("logged twice by mistake".to_owned()),
        }
    }
}

impl Example for BookingConfirmed {
    /// A valid example: bike 12 in an evening spin class.
    fn example() -> Self {
        Self {
            booking_id: "bk_5521".to_owned(),
            class_id: "cls_spin_0309".to_owned(),
            member_id: "mem_1042".to_owned(),
            class_starts_at: utc(2026, 3, 9, 18, 0),
            spot_number: Some(12),
        }
    }
}

impl Example for BookingCancelled {
    /// A valid example: the member cancelled in time because they felt unwell.
    fn example() -> Self {
        Self {
            booking_id: "bk_5521".to_owned(),
            class_id: "cls_spin_0309".to_owned(),
            member_id: "mem_1042".to_owned(),
            cancelled_by: CancelledBy::Member,
            reason: Some("feeling unwell".to_owned()),
            late_cancellation: false,
        }
    }
}

impl Example for MembershipCreated {
    /// A valid example: one month of an unlimited plan for 49.90 EUR.
    fn example() -> Self {
        Self {
            membership_id: "ms_3307".to_owned(),
            member_id: "mem_1042".to_owned(),
            plan_id: "plan_monthly_unlimited".to_owned(),
            starts_at: utc(2026, 3, 1, 0, 0),
            expires_at: utc(2026, 4, 1, 0, 0),
            price_minor: 4990,
            currency: "EUR".to_owned(),
        }
    }
}

impl Example for MembershipExpired {
    /// A valid example: a monthly membership that ran out without renewal.
    fn example() -> Self {
        Self {
            membership_id: "ms_2871".to_owned(),
            member_id: "mem_1042".to_owned(),
            plan_id: "plan_monthly_unlimited".to_owned(),
            expired_at: utc(2026, 3, 1, 0, 0),
            renewed: false,
        }
    }
}

impl Example for PaymentCompleted {
    /// A valid example: a 49.90 EUR card payment for a monthly membership.
    fn example() -> Self {
        Self {
            payment_id: "pay_8842".to_owned(),
            member_id: "mem_1042".to_owned(),
            amount_minor: 4990,
            currency: "EUR".to_owned(),
            method: PaymentMethod::Card,
            reference: Some("inv-2026-000318".to_owned()),
        }
    }
}

impl Example for PaymentFailed {
    /// A valid example: a declined card that may be retried.
    fn example() -> Self {
        Self {
            payment_id: "pay_8843".to_owned(),
            member_id: "mem_1042".to_owned(),
            amount_minor: 4990,
            currency: "EUR".to_owned(),
            failure_code: "card_declined".to_owned(),
            failure_message: Some("the card was declined by the issuer".to_owned()),
            retryable: true,
        }
    }
}

impl Example for ClassScheduled {
    /// A valid example: a 45-minute spin class for 24 riders in studio 2.
    fn example() -> Self {
        Self {
            class_id: "cls_spin_0309".to_owned(),
            name: "Evening Spin".to_owned(),
            instructor_id: "ins_017".to_owned(),
            starts_at: utc(2026, 3, 9, 18, 0),
            ends_at: utc(2026, 3, 9, 18, 45),
            capacity: 24,
            location: Some("Studio 2".to_owned()),
        }
    }
}

impl Example for ClassCancelled {
    /// A valid example: the instructor is unavailable and members are told.
    fn example() -> Self {
        Self {
            class_id: "cls_spin_0309".to_owned(),
            starts_at: utc(2026, 3, 9, 18, 0),
            reason: "instructor unavailable".to_owned(),
            notify_members: true,
        }
    }
}
