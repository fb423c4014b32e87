//! The process's sampler (`Sampler::global`, what periscope's `init` sets from
//! `OTEL_TRACES_SAMPLER`) decides for the traces the client side and jobs start where no
//! OpenTelemetry layer does. In a test binary of its own: the sampler is the whole process's.

use http::{Method, Uri};
use periscope_context::{Carrier, ExtractOptions, RequestContext};
use periscope_trace::job::JobSpan;
use periscope_trace::{ClientSpan, Sampler};

#[test]
fn the_process_sampler_decides_for_calls_and_jobs_that_start_a_trace() {
    let uri: Uri = "http://inventory.internal/items".parse().unwrap();
    let empty = Carrier::default();
    let sampled_caller = Carrier::from_context(&RequestContext::new_root());
    assert!(sampled_caller.to_context().is_sampled());

    Sampler::ParentBasedAlwaysOff.set_global();
    // A call outside any request starts a trace: not sampled.
    assert!(!ClientSpan::new(&Method::GET, &uri).context().is_sampled());
    // A call inside a request keeps the request's decision.
    let request = RequestContext::new_root();
    assert!(
        ClientSpan::child_of(&request, &Method::GET, &uri)
            .context()
            .is_sampled()
    );
    // A job starting a trace: not sampled; continuing a sampled one: sampled.
    assert!(
        !JobSpan::from_carrier("reindex", &empty)
            .context()
            .is_sampled()
    );
    assert!(
        JobSpan::from_carrier("reindex", &sampled_caller)
            .context()
            .is_sampled()
    );

    Sampler::AlwaysOff.set_global();
    // Not parent-based: the caller's flag does not count.
    assert!(
        !JobSpan::from_carrier("reindex", &sampled_caller)
            .context()
            .is_sampled()
    );
    // Options that sample no new trace leave the sampler its say over a continued one.
    let quiet = ExtractOptions {
        sample_new_traces: false,
        ..ExtractOptions::default()
    };
    assert!(
        !JobSpan::from_carrier_with("reindex", &sampled_caller, &quiet)
            .context()
            .is_sampled()
    );

    Sampler::AlwaysOn.set_global();
    assert!(ClientSpan::new(&Method::GET, &uri).context().is_sampled());
    assert!(
        JobSpan::from_carrier("reindex", &empty)
            .context()
            .is_sampled()
    );
    // Options that sample no new trace keep a job's new trace unsampled.
    let job = JobSpan::from_carrier_with("reindex", &empty, &quiet);
    assert!(!job.context().is_sampled());
}
