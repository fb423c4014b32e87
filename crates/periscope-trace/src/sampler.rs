//! Which traces are sampled (`OTEL_TRACES_SAMPLER`): decided by the layers themselves where no
//! OpenTelemetry sampler does (a build without the `otel` feature, or one that exports
//! nothing), the way OpenTelemetry's samplers decide, so the `sampled` flag sent downstream
//! follows the setting whether this service exports or not.

use std::sync::atomic::{AtomicU64, Ordering};

use periscope_context::{RequestContext, TraceId};

/// The sampler for spans (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`).
///
/// ```
/// use periscope_trace::Sampler;
///
/// let sampler = Sampler::from_env_values(Some("parentbased_traceidratio"), Some("0.25")).unwrap();
/// assert_eq!(sampler, Sampler::ParentBasedTraceIdRatio(0.25));
/// assert!(Sampler::from_env_values(Some("sometimes"), None).is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Sampler {
    /// `always_on`: every trace.
    AlwaysOn,
    /// `always_off`: no trace.
    AlwaysOff,
    /// `traceidratio`: this fraction of traces, by trace id, whatever the caller decided.
    TraceIdRatio(f64),
    /// `parentbased_always_on` (the default): follow the caller; sample new traces.
    #[default]
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`: follow the caller; do not sample new traces.
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio`: follow the caller; sample this fraction of new traces.
    ParentBasedTraceIdRatio(f64),
}

/// A sampler setting that cannot be used: the variable, its value and what it accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidSampler {
    /// `OTEL_TRACES_SAMPLER` or `OTEL_TRACES_SAMPLER_ARG`.
    pub var: &'static str,
    /// The value given.
    pub value: String,
    /// What the variable accepts.
    pub expected: &'static str,
}

impl Sampler {
    /// What `OTEL_TRACES_SAMPLER` accepts, for error messages.
    pub const ACCEPTED: &'static str = "expected always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio (jaeger_remote, parentbased_jaeger_remote and xray are not supported)";

    /// What `OTEL_TRACES_SAMPLER_ARG` accepts, for error messages.
    pub const ACCEPTED_RATIO: &'static str =
        "expected a sampling ratio between 0 and 1, such as 0.25";

    /// The sampler the values of `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` name (the
    /// name in any case; the ratio read only by the two ratio samplers, `1.0` when absent).
    /// No name is the default, `parentbased_always_on`.
    pub fn from_env_values(name: Option<&str>, arg: Option<&str>) -> Result<Self, InvalidSampler> {
        let ratio = || match arg {
            None => Ok(1.0),
            Some(value) => match value.parse::<f64>() {
                Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
                _ => Err(InvalidSampler {
                    var: "OTEL_TRACES_SAMPLER_ARG",
                    value: value.to_owned(),
                    expected: Self::ACCEPTED_RATIO,
                }),
            },
        };
        let Some(name) = name else {
            return Ok(Self::default());
        };
        match name.to_ascii_lowercase().as_str() {
            "always_on" => Ok(Self::AlwaysOn),
            "always_off" => Ok(Self::AlwaysOff),
            "traceidratio" => Ok(Self::TraceIdRatio(ratio()?)),
            "parentbased_always_on" => Ok(Self::ParentBasedAlwaysOn),
            "parentbased_always_off" => Ok(Self::ParentBasedAlwaysOff),
            "parentbased_traceidratio" => Ok(Self::ParentBasedTraceIdRatio(ratio()?)),
            _ => Err(InvalidSampler {
                var: "OTEL_TRACES_SAMPLER",
                value: name.to_owned(),
                expected: Self::ACCEPTED,
            }),
        }
    }

    /// The values of `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` naming this sampler,
    /// which [`from_env_values`](Self::from_env_values) reads back (the ratio for the two ratio
    /// samplers only).
    ///
    /// ```
    /// use periscope_trace::Sampler;
    ///
    /// let (name, arg) = Sampler::ParentBasedTraceIdRatio(0.25).env_values();
    /// assert_eq!((name, arg.as_deref()), ("parentbased_traceidratio", Some("0.25")));
    /// assert_eq!(Sampler::from_env_values(Some(name), arg.as_deref()), Ok(Sampler::ParentBasedTraceIdRatio(0.25)));
    /// ```
    pub fn env_values(self) -> (&'static str, Option<String>) {
        match self {
            Self::AlwaysOn => ("always_on", None),
            Self::AlwaysOff => ("always_off", None),
            Self::TraceIdRatio(ratio) => ("traceidratio", Some(ratio.to_string())),
            Self::ParentBasedAlwaysOn => ("parentbased_always_on", None),
            Self::ParentBasedAlwaysOff => ("parentbased_always_off", None),
            Self::ParentBasedTraceIdRatio(ratio) => {
                ("parentbased_traceidratio", Some(ratio.to_string()))
            }
        }
    }

    /// Whether a span of trace `trace_id` is sampled: `parent_sampled` is the caller's flag
    /// for a continued trace, `None` for a trace started here. A ratio sampler decides by
    /// the trace id exactly as OpenTelemetry's `TraceIdRatioBased` does, so every service of a
    /// trace, exporting or not, takes the same decision for it.
    ///
    /// ```
    /// use periscope_trace::Sampler;
    /// use periscope_trace::context::TraceId;
    ///
    /// let id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    /// assert!(!Sampler::ParentBasedAlwaysOff.samples(id, None));
    /// assert!(Sampler::ParentBasedAlwaysOff.samples(id, Some(true)));
    /// assert!(!Sampler::AlwaysOff.samples(id, Some(true)));
    /// ```
    pub fn samples(self, trace_id: TraceId, parent_sampled: Option<bool>) -> bool {
        match self {
            Self::AlwaysOn => true,
            Self::AlwaysOff => false,
            Self::TraceIdRatio(ratio) => by_ratio(ratio, trace_id),
            Self::ParentBasedAlwaysOn => parent_sampled.unwrap_or(true),
            Self::ParentBasedAlwaysOff => parent_sampled.unwrap_or(false),
            Self::ParentBasedTraceIdRatio(ratio) => {
                parent_sampled.unwrap_or_else(|| by_ratio(ratio, trace_id))
            }
        }
    }

    /// Sets `ctx`'s sampled flag by this sampler: its caller's flag counts when `ctx`
    /// continues a trace (it has a parent span).
    pub(crate) fn apply(self, ctx: &mut RequestContext) {
        let parent = ctx.parent_span_id.map(|_| ctx.trace_flags.is_sampled());
        let sampled = self.samples(ctx.trace_id, parent);
        ctx.trace_flags = ctx.trace_flags.with_sampled(sampled);
    }

    /// Makes this the process's sampler: what [`CorrelationLayer`](crate::CorrelationLayer),
    /// the client layers and jobs use for the traces they start (and, for the samplers that
    /// are not parent-based, continue) unless told otherwise. `OtelGuard::register_globals`
    /// (feature `otel`) and periscope's `init` call it with `OTEL_TRACES_SAMPLER`. A ratio
    /// outside 0 to 1 is kept as the nearest bound (it decides the same), NaN as 0.
    ///
    /// ```
    /// use periscope_trace::Sampler;
    ///
    /// Sampler::ParentBasedTraceIdRatio(0.1).set_global();
    /// assert_eq!(Sampler::global(), Sampler::ParentBasedTraceIdRatio(0.1));
    /// # Sampler::default().set_global();
    /// ```
    pub fn set_global(self) {
        GLOBAL.store(self.bits(), Ordering::Relaxed);
    }

    /// The process's sampler: `parentbased_always_on` unless
    /// [`set_global`](Self::set_global) said otherwise.
    // Inlined into `Correlation::call`, compiled in the service's crate (every request).
    #[inline]
    pub fn global() -> Self {
        Self::from_bits(GLOBAL.load(Ordering::Relaxed))
    }

    /// One word, so a sampler set while requests run is never read half-set: the ratio's bits
    /// (a ratio from 0 to 1 leaves the top two clear), bit 63 for a parent-based sampler, bit
    /// 62 for `always_on` / `always_off` (ratio 1 / 0).
    fn bits(self) -> u64 {
        let (parent_based, always, ratio) = match self {
            Self::AlwaysOn => (false, true, 1.0),
            Self::AlwaysOff => (false, true, 0.0),
            Self::TraceIdRatio(ratio) => (false, false, ratio),
            Self::ParentBasedAlwaysOn => (true, true, 1.0),
            Self::ParentBasedAlwaysOff => (true, true, 0.0),
            Self::ParentBasedTraceIdRatio(ratio) => (true, false, ratio),
        };
        // `+ 0.0` turns -0.0, whose sign bit is the parent-based bit, into 0.0.
        let ratio: f64 = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0) + 0.0
        };
        ratio.to_bits() | u64::from(parent_based) << 63 | u64::from(always) << 62
    }

    fn from_bits(bits: u64) -> Self {
        let ratio = f64::from_bits(bits & !(0b11 << 62));
        match (bits >> 63 == 1, bits >> 62 & 1 == 1) {
            (false, true) if ratio >= 1.0 => Self::AlwaysOn,
            (false, true) => Self::AlwaysOff,
            (false, false) => Self::TraceIdRatio(ratio),
            (true, true) if ratio >= 1.0 => Self::ParentBasedAlwaysOn,
            (true, true) => Self::ParentBasedAlwaysOff,
            (true, false) => Self::ParentBasedTraceIdRatio(ratio),
        }
    }
}

/// The process's sampler, as [`Sampler::bits`]: one relaxed load per request.
static GLOBAL: AtomicU64 = AtomicU64::new(PARENT_BASED_ALWAYS_ON);

/// [`Sampler::ParentBasedAlwaysOn`]'s bits: parent-based, `always`, ratio 1.
const PARENT_BASED_ALWAYS_ON: u64 = 1.0f64.to_bits() | 0b11 << 62;

/// OpenTelemetry's `TraceIdRatioBased` decision: the trace id's last eight bytes, shifted
/// right by one, below `ratio` × 2⁶³.
fn by_ratio(ratio: f64, trace_id: TraceId) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let bytes = trace_id.to_bytes();
    let mut low = [0u8; 8];
    low.copy_from_slice(&bytes[8..]);
    (u64::from_be_bytes(low) >> 1) < bound
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samplers the specification names but this build lacks are told apart from typos.
    #[test]
    fn spec_samplers_this_build_lacks_are_named_unsupported() {
        for name in ["jaeger_remote", "parentbased_jaeger_remote", "xray"] {
            let error = Sampler::from_env_values(Some(name), None).unwrap_err();
            assert_eq!(error.var, "OTEL_TRACES_SAMPLER");
            assert!(
                error.expected.contains(&format!("{name} "))
                    || error.expected.contains(&format!("{name})")),
                "{}",
                error.expected
            );
            assert!(error.expected.contains("not supported"));
        }
    }

    fn id(hex: &str) -> TraceId {
        TraceId::from_hex(hex).unwrap()
    }

    #[test]
    fn ratio_decides_by_the_last_eight_bytes_of_the_trace_id() {
        let low = id("ffffffffffffffff0000000000000001");
        let high = id("0000000000000000fffffffffffffffe");
        let half = Sampler::TraceIdRatio(0.5);
        assert!(half.samples(low, Some(false)));
        assert!(!half.samples(high, Some(true)));
        assert!(!Sampler::TraceIdRatio(0.0).samples(low, None));
        assert!(Sampler::TraceIdRatio(1.0).samples(high, None));
        let parent_based = Sampler::ParentBasedTraceIdRatio(0.5);
        assert!(parent_based.samples(high, Some(true)));
        assert!(!parent_based.samples(low, Some(false)));
        assert!(!parent_based.samples(high, None));
        assert!(parent_based.samples(low, None));
    }

    #[test]
    fn env_values_read_as_the_otel_configuration_reads_them() {
        let read = |name, arg| Sampler::from_env_values(name, arg);
        assert_eq!(read(None, Some("0.5")), Ok(Sampler::ParentBasedAlwaysOn));
        assert_eq!(read(Some("ALWAYS_OFF"), Some("x")), Ok(Sampler::AlwaysOff));
        assert_eq!(
            read(Some("traceidratio"), None),
            Ok(Sampler::TraceIdRatio(1.0))
        );
        let error = read(Some("parentbased_traceidratio"), Some("1.5")).unwrap_err();
        assert_eq!(error.var, "OTEL_TRACES_SAMPLER_ARG");
        assert_eq!(
            read(Some("b3"), None).unwrap_err().var,
            "OTEL_TRACES_SAMPLER"
        );
    }

    #[test]
    fn every_sampler_survives_the_global_word() {
        for sampler in [
            Sampler::AlwaysOn,
            Sampler::AlwaysOff,
            Sampler::TraceIdRatio(0.0),
            Sampler::TraceIdRatio(0.3),
            Sampler::TraceIdRatio(1.0),
            Sampler::ParentBasedAlwaysOn,
            Sampler::ParentBasedAlwaysOff,
            Sampler::ParentBasedTraceIdRatio(1e-9),
            Sampler::ParentBasedTraceIdRatio(1.0),
        ] {
            assert_eq!(Sampler::from_bits(sampler.bits()), sampler);
        }
        assert_eq!(
            Sampler::from_bits(PARENT_BASED_ALWAYS_ON),
            Sampler::default()
        );
        let out_of_range = Sampler::TraceIdRatio(7.0).bits();
        assert_eq!(Sampler::from_bits(out_of_range), Sampler::TraceIdRatio(1.0));
        let nan = Sampler::ParentBasedTraceIdRatio(f64::NAN).bits();
        assert_eq!(
            Sampler::from_bits(nan),
            Sampler::ParentBasedTraceIdRatio(0.0)
        );
        for negative in [-1.0, -0.0] {
            let bits = Sampler::TraceIdRatio(negative).bits();
            assert_eq!(Sampler::from_bits(bits), Sampler::TraceIdRatio(0.0));
        }
    }
}
