//! Which of a span's fields the log layer keeps, worked out once per callsite.
//!
//! The request span declares some twenty fields, most of them dotted OpenTelemetry attributes
//! (`otel.kind`, `url.path`, ...) that no line carries: looking each one's name up on every
//! request cost more than keeping the few that are kept. A span's callsite fixes its field
//! names, so which of them are kept is known from its `Metadata` alone.

use std::cell::Cell;
use std::error::Error;
use std::fmt;

use tracing::Metadata;
use tracing::field::{Field, Visit};

use crate::fields::{Slot, TENANT_FIELD, ValueRules};

/// Entries in [`SPAN_PLANS`] (a power of two); it is emptied when three quarters are used.
const SPAN_PLAN_SLOTS: usize = 64;

/// A cached plan: (rules id, metadata address, plan). Rules id 0: a free entry.
type Entry = (u64, usize, SpanPlan);

const FREE: Entry = (0, 0, SpanPlan { always: 0, data: 0 });

thread_local! {
    /// Span plans by rules and callsite: an open-addressing table, as the field plans'.
    /// `Metadata` is `'static`, so its address names the same field names for good.
    static SPAN_PLANS: ([Cell<Entry>; SPAN_PLAN_SLOTS], Cell<usize>) =
        const { ([const { Cell::new(FREE) }; SPAN_PLAN_SLOTS], Cell::new(0)) };
}

/// The fields of one callsite a layer keeps, by index (bit `i`: field `i`); fields from the
/// 64th on are always visited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SpanPlan {
    /// Kept whatever the layer's settings: context fields, the message, the tenant list (its
    /// members may be context fields).
    always: u64,
    /// Other undotted fields: kept only when the layer keeps span data.
    data: u64,
}

impl SpanPlan {
    /// The plan of `metadata`'s fields under `rules`: read from the per-thread cache, worked
    /// out on a miss.
    pub(crate) fn of(rules: &ValueRules, metadata: &'static Metadata<'static>) -> Self {
        let key = (rules.id(), metadata as *const Metadata<'static> as usize);
        let hash = (key.1 as u64 ^ key.0.rotate_left(32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let first = (hash >> (64 - SPAN_PLAN_SLOTS.trailing_zeros())) as usize;
        SPAN_PLANS.with(|(plans, used)| {
            let mut index = first;
            loop {
                let (id, address, plan) = plans[index].get();
                if (id, address) == key {
                    return plan;
                }
                if id == 0 {
                    break;
                }
                index = (index + 1) % SPAN_PLAN_SLOTS;
            }
            let plan = Self::work_out(rules, metadata);
            if used.get() >= SPAN_PLAN_SLOTS / 4 * 3 {
                plans.iter().for_each(|entry| entry.set(FREE));
                used.set(0);
                index = first;
            }
            plans[index].set((key.0, key.1, plan));
            used.set(used.get() + 1);
            plan
        })
    }

    fn work_out(rules: &ValueRules, metadata: &Metadata<'_>) -> Self {
        let mut plan = Self { always: 0, data: 0 };
        for (index, field) in metadata.fields().iter().enumerate().take(64) {
            let name = field.name();
            let bit = 1 << index;
            match rules.slot(name) {
                Slot::Context(_) | Slot::Message => plan.always |= bit,
                Slot::Data if name == TENANT_FIELD => plan.always |= bit,
                // Dotted names are attributes for OpenTelemetry, never kept (see
                // `SpanFields::begin`).
                Slot::Data if name.contains('.') => {}
                Slot::Data => plan.data |= bit,
            }
        }
        plan
    }

    /// The fields to visit, for a layer that keeps span data or not.
    pub(crate) fn kept(self, keep_data: bool) -> Kept {
        Kept(self.always | if keep_data { self.data } else { 0 })
    }
}

/// The fields of one callsite a layer visits: see [`SpanPlan::kept`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Kept(u64);

impl Kept {
    /// Whether `field` is visited.
    #[inline(always)]
    pub(crate) fn has(self, field: &Field) -> bool {
        let index = field.index();
        index >= 64 || self.0 & (1 << index) != 0
    }

    /// How many fields are visited, at most.
    pub(crate) fn count(self) -> usize {
        self.0.count_ones() as usize
    }
}

/// Passes the fields `kept` names on to `inner`, and no other.
pub(crate) struct KeptFields<'a, V> {
    pub(crate) kept: Kept,
    pub(crate) inner: &'a mut V,
}

impl<V: Visit> Visit for KeptFields<'_, V> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.kept.has(field) {
            self.inner.record_f64(field, value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.kept.has(field) {
            self.inner.record_i64(field, value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.kept.has(field) {
            self.inner.record_u64(field, value);
        }
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        if self.kept.has(field) {
            self.inner.record_i128(field, value);
        }
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        if self.kept.has(field) {
            self.inner.record_u128(field, value);
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.kept.has(field) {
            self.inner.record_bool(field, value);
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if self.kept.has(field) {
            self.inner.record_str(field, value);
        }
    }

    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        if self.kept.has(field) {
            self.inner.record_bytes(field, value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn Error + 'static)) {
        if self.kept.has(field) {
            self.inner.record_error(field, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.kept.has(field) {
            self.inner.record_debug(field, value);
        }
    }
}

/// Whether any field a record visits is kept: a record of fields the layer does not keep
/// (the server span's `http.response.status_code`) then costs no formatting set-up at all.
pub(crate) struct AnyKept {
    pub(crate) kept: Kept,
    pub(crate) found: bool,
}

impl Visit for AnyKept {
    fn record_debug(&mut self, field: &Field, _: &dyn fmt::Debug) {
        self.found |= self.kept.has(field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::Redactor;

    #[test]
    fn plans_keep_context_fields_the_tenant_list_and_undotted_data() {
        let rules = ValueRules::new(Redactor::default(), 64, vec!["request_id".into()]);
        // A span is made (and its metadata known) only under a subscriber.
        let span = tracing::subscriber::with_default(tracing_subscriber::registry(), || {
            tracing::info_span!(
                "plan",
                otel.kind = "server",
                request_id = "req_1",
                job = 3,
                tenant = "a=b",
                message = "m",
                url.path = "/x",
            )
        });
        let metadata = span.metadata().expect("the span is enabled");
        let plan = SpanPlan::of(&rules, metadata);
        // Fields in declaration order: otel.kind, request_id, job, tenant, message, url.path.
        assert_eq!(plan.kept(false), Kept(0b01_1010));
        assert_eq!(plan.kept(true), Kept(0b01_1110));
        // Read back from the cache; another set of rules gets its own answer.
        assert_eq!(SpanPlan::of(&rules, metadata), plan);
        let other = ValueRules::new(Redactor::default(), 64, vec!["job".into()]);
        assert_eq!(SpanPlan::of(&other, metadata).kept(false), Kept(0b01_1100));
    }
}
