//! Cost of one background sample with the fake source, and of a scrape of the GPU families,
//! side by side with baselines: the bare source call, and the same series held in ordinary
//! prometheus-client metric families.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::AtomicU64;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use periscope_gpu::{FakeSource, GpuCollector, GpuSource, SampleRequest};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

const GPUS: [u32; 2] = [1, 8];

fn sample(c: &mut Criterion) {
    let mut group = c.benchmark_group("gpu_sample");
    let request = SampleRequest {
        processes: true,
        pcie: true,
    };
    for gpus in GPUS {
        let mut source = FakeSource::demo(gpus);
        group.bench_with_input(BenchmarkId::new("fake_source_only", gpus), &gpus, |b, _| {
            b.iter(|| black_box(source.sample(request)))
        });
        let (_gpu, mut sampler) = GpuCollector::builder()
            .processes(true)
            .pcie(true)
            .build(FakeSource::demo(gpus));
        group.bench_with_input(BenchmarkId::new("sample_once", gpus), &gpus, |b, _| {
            b.iter(|| black_box(sampler.sample_once()))
        });
    }
    group.finish();
}

type Labels = Vec<(String, String)>;
type GaugeFamily = Family<Labels, Gauge<f64, AtomicU64>>;
type CounterFamily = Family<Labels, Counter<f64, AtomicU64>>;

/// Parses `name{k="v",...} value` as the collector writes it.
fn parse_line(line: &str) -> (&str, Labels, f64) {
    let (series, value) = line.rsplit_once(' ').expect("name and value");
    let value = value.parse().expect("number");
    let Some((name, rest)) = series.split_once('{') else {
        return (series, Vec::new(), value);
    };
    let labels = rest
        .trim_end_matches('}')
        .split("\",")
        .map(|kv| {
            let (k, v) = kv.split_once("=\"").expect("label");
            (k.to_owned(), v.trim_end_matches('"').to_owned())
        })
        .collect();
    (name, labels, value)
}

/// The same series as the collector's, held in ordinary prometheus-client families.
fn baseline_registry(text: &str) -> Registry {
    let mut gauges: BTreeMap<String, GaugeFamily> = BTreeMap::new();
    let mut counters: BTreeMap<String, CounterFamily> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, labels, value) = parse_line(line);
        match name.strip_suffix("_total") {
            Some(base) => {
                let family = counters.entry(base.to_owned()).or_default();
                family.get_or_create(&labels).inc_by(value);
            }
            None => {
                let family = gauges.entry(name.to_owned()).or_default();
                family.get_or_create(&labels).set(value);
            }
        }
    }
    let mut registry = Registry::default();
    for (name, family) in gauges {
        registry.register(name, "help", family);
    }
    for (name, family) in counters {
        registry.register(name, "help", family);
    }
    registry
}

fn scrape(c: &mut Criterion) {
    let mut group = c.benchmark_group("gpu_scrape");
    for gpus in GPUS {
        let (gpu, mut sampler) = GpuCollector::builder()
            .processes(true)
            .pcie(true)
            .build(FakeSource::demo(gpus));
        sampler.sample_once();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(gpu.clone()));
        let mut text = String::new();
        encode(&mut text, &registry).expect("encode");
        let baseline = baseline_registry(&text);

        group.bench_with_input(
            BenchmarkId::new("periscope_collector", gpus),
            &gpus,
            |b, _| {
                let mut out = String::with_capacity(text.len() * 2);
                b.iter(|| {
                    out.clear();
                    encode(&mut out, &registry).expect("encode");
                    black_box(out.len())
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("prometheus_client_families", gpus),
            &gpus,
            |b, _| {
                let mut out = String::with_capacity(text.len() * 2);
                b.iter(|| {
                    out.clear();
                    encode(&mut out, &baseline).expect("encode");
                    black_box(out.len())
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("snapshot_json", gpus), &gpus, |b, _| {
            b.iter(|| black_box(serde_json::to_vec(&gpu.snapshot()).expect("json")))
        });
    }
    group.finish();
}

criterion_group!(benches, sample, scrape);
criterion_main!(benches);
