//! Prometheus exposition of the last sample: the `gpu_*` families.

use std::fmt;
use std::sync::LazyLock;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use crate::collector::Published;
use crate::{DeviceSample, GpuCollector};

impl Collector for GpuCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        encode_published(&self.published(), &mut encoder)
    }
}

impl GpuCollector {
    /// The names the collector can write, with their types, as a registry takes them
    /// (`gpu_memory_used_bytes`, `gpu_collector_errors_total`): reserve them where the
    /// collector is registered (`MetricsRegistry::reserve` in periscope-metrics), so that no
    /// other metric can take them.
    pub fn metric_names() -> Vec<(String, MetricType)> {
        FAMILIES
            .all()
            .into_iter()
            .map(|family| {
                let mut name = family.name.to_owned();
                if let Some(unit) = &family.unit {
                    name.push('_');
                    name.push_str(unit.as_str());
                }
                if matches!(family.kind, MetricType::Counter) {
                    name.push_str("_total");
                }
                (name, family.kind)
            })
            .collect()
    }
}

/// A metric family: its name without the unit, help, unit and type.
struct Family {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    kind: MetricType,
}

/// A sample value: integers stay integers in the text.
#[derive(Clone, Copy)]
enum Value {
    Int(u64),
    Float(f64),
}

impl Value {
    fn encode(self, metric: &mut MetricEncoder<'_>, kind: &MetricType) -> fmt::Result {
        match (kind, self) {
            (MetricType::Counter, Value::Int(v)) => {
                metric.encode_counter::<NoLabelSet, u64, u64>(&v, None)
            }
            (MetricType::Counter, Value::Float(v)) => {
                metric.encode_counter::<NoLabelSet, f64, f64>(&v, None)
            }
            (_, Value::Int(v)) => metric.encode_gauge(&v),
            (_, Value::Float(v)) => metric.encode_gauge(&v),
        }
    }
}

fn gauge(name: &'static str, help: &'static str, unit: Option<Unit>) -> Family {
    Family {
        name,
        help,
        unit,
        kind: MetricType::Gauge,
    }
}

fn counter(name: &'static str, help: &'static str, unit: Option<Unit>) -> Family {
    Family {
        name,
        help,
        unit,
        kind: MetricType::Counter,
    }
}

fn other(unit: &str) -> Option<Unit> {
    Some(Unit::Other(unit.to_owned()))
}

/// Every family, built once: `Unit::Other` holds a `String`.
struct Families {
    info: Family,
    utilization: Family,
    memory_utilization: Family,
    memory_used: Family,
    memory_total: Family,
    temperature: Family,
    power_usage: Family,
    power_limit: Family,
    energy: Family,
    sm_clock: Family,
    memory_clock: Family,
    ecc_errors: Family,
    throttle: Family,
    process_memory: Family,
    pcie: Family,
    up: Family,
    errors: Family,
    last_success: Family,
}

impl Families {
    fn all(&self) -> [&Family; 18] {
        [
            &self.info,
            &self.utilization,
            &self.memory_utilization,
            &self.memory_used,
            &self.memory_total,
            &self.temperature,
            &self.power_usage,
            &self.power_limit,
            &self.energy,
            &self.sm_clock,
            &self.memory_clock,
            &self.ecc_errors,
            &self.throttle,
            &self.process_memory,
            &self.pcie,
            &self.up,
            &self.errors,
            &self.last_success,
        ]
    }
}

static FAMILIES: LazyLock<Families> = LazyLock::new(|| Families {
    info: gauge("gpu_info", "GPU identity; always 1.", None),
    utilization: gauge(
        "gpu_utilization",
        "Fraction of the last sample period in which a kernel ran on the GPU.",
        other("ratio"),
    ),
    memory_utilization: gauge(
        "gpu_memory_utilization",
        "Fraction of the last sample period in which GPU memory was read or written.",
        other("ratio"),
    ),
    memory_used: gauge("gpu_memory_used", "GPU memory in use.", Some(Unit::Bytes)),
    memory_total: gauge(
        "gpu_memory_total",
        "GPU memory installed.",
        Some(Unit::Bytes),
    ),
    temperature: gauge(
        "gpu_temperature",
        "GPU die temperature.",
        Some(Unit::Celsius),
    ),
    power_usage: gauge("gpu_power_usage", "GPU power draw.", other("watts")),
    power_limit: gauge(
        "gpu_power_limit",
        "GPU enforced power limit.",
        other("watts"),
    ),
    energy: counter(
        "gpu_energy",
        "GPU energy used since the driver loaded.",
        Some(Unit::Joules),
    ),
    sm_clock: gauge("gpu_sm_clock", "GPU SM clock.", other("hertz")),
    memory_clock: gauge("gpu_memory_clock", "GPU memory clock.", other("hertz")),
    ecc_errors: counter(
        "gpu_ecc_errors",
        "GPU ECC errors over the device's life, by type (corrected, uncorrected).",
        None,
    ),
    throttle: gauge(
        "gpu_throttle_reason_active",
        "1 when this reason holds the GPU clocks down now, else 0.",
        None,
    ),
    process_memory: gauge(
        "gpu_process_memory_used",
        "GPU memory used by this service's own processes.",
        Some(Unit::Bytes),
    ),
    pcie: gauge(
        "gpu_pcie_throughput",
        "GPU PCIe throughput by direction (tx, rx).",
        other("bytes_per_second"),
    ),
    up: gauge(
        "gpu_collector_up",
        "1 when the last GPU sample succeeded, else 0.",
        None,
    ),
    errors: counter(
        "gpu_collector_errors",
        "Failed GPU samples and unreadable devices.",
        None,
    ),
    last_success: gauge(
        "gpu_collector_last_success_timestamp",
        "Unix time of the last successful GPU sample.",
        Some(Unit::Seconds),
    ),
});

/// Writes one family, or nothing when it has no rows (a value no device supports is absent).
fn family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    family: &Family,
    rows: impl IntoIterator<Item = (L, Value)>,
) -> fmt::Result {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut metric =
        encoder.encode_descriptor(family.name, family.help, family.unit.as_ref(), family.kind)?;
    for (labels, value) in rows {
        value.encode(&mut metric.encode_family(&labels)?, &family.kind)?;
    }
    Ok(())
}

/// Writes an unlabelled family, or nothing when there is no value.
fn single(
    encoder: &mut DescriptorEncoder<'_>,
    family: &Family,
    value: Option<Value>,
) -> fmt::Result {
    let Some(value) = value else { return Ok(()) };
    let mut metric =
        encoder.encode_descriptor(family.name, family.help, family.unit.as_ref(), family.kind)?;
    value.encode(&mut metric, &family.kind)
}

type DeviceLabels<'a> = [(&'static str, &'a str); 2];

fn device_labels(device: &DeviceSample) -> DeviceLabels<'_> {
    [("gpu", device.id.as_str()), ("uuid", device.uuid.as_str())]
}

/// One row per device that has the value.
fn per_device<'a>(
    devices: &'a [DeviceSample],
    value: impl Fn(&DeviceSample) -> Option<Value> + 'a,
) -> impl Iterator<Item = (DeviceLabels<'a>, Value)> + 'a {
    devices
        .iter()
        .filter_map(move |d| value(d).map(|v| (device_labels(d), v)))
}

/// The device labels plus one more.
type SplitLabels<'a> = (DeviceLabels<'a>, [(&'static str, &'static str); 1]);

/// One row per device and value of an extra label (`type`, `reason`, `direction`).
fn per_device_by<'a, I>(
    devices: &'a [DeviceSample],
    key: &'static str,
    values: impl Fn(&'a DeviceSample) -> I + 'a,
) -> impl Iterator<Item = (SplitLabels<'a>, Value)> + 'a
where
    I: IntoIterator<Item = (&'static str, Option<Value>)> + 'a,
{
    devices.iter().flat_map(move |d| {
        values(d).into_iter().filter_map(move |(label, value)| {
            value.map(|v| ((device_labels(d), [(key, label)]), v))
        })
    })
}

fn float(value: Option<f64>) -> Option<Value> {
    value.filter(|v| v.is_finite()).map(Value::Float)
}

fn int(value: Option<u64>) -> Option<Value> {
    value.map(Value::Int)
}

pub(crate) fn encode_published(
    published: &Published,
    encoder: &mut DescriptorEncoder<'_>,
) -> fmt::Result {
    let f = &*FAMILIES;
    if let Some(sample) = &published.sample {
        let devices = sample.devices.as_slice();
        let driver = sample.driver_version.as_deref().unwrap_or("");
        family(
            encoder,
            &f.info,
            devices.iter().map(|d| {
                let labels = [
                    ("gpu", d.id.as_str()),
                    ("uuid", d.uuid.as_str()),
                    ("name", d.name.as_str()),
                    ("driver_version", driver),
                    ("pci_bus_id", d.pci_bus_id.as_deref().unwrap_or("")),
                ];
                (labels, Value::Int(1))
            }),
        )?;
        family(
            encoder,
            &f.utilization,
            per_device(devices, |d| float(d.utilization_ratio)),
        )?;
        family(
            encoder,
            &f.memory_utilization,
            per_device(devices, |d| float(d.memory_utilization_ratio)),
        )?;
        family(
            encoder,
            &f.memory_used,
            per_device(devices, |d| int(d.memory_used_bytes)),
        )?;
        family(
            encoder,
            &f.memory_total,
            per_device(devices, |d| int(d.memory_total_bytes)),
        )?;
        family(
            encoder,
            &f.temperature,
            per_device(devices, |d| float(d.temperature_celsius)),
        )?;
        family(
            encoder,
            &f.power_usage,
            per_device(devices, |d| float(d.power_usage_watts)),
        )?;
        family(
            encoder,
            &f.power_limit,
            per_device(devices, |d| float(d.power_limit_watts)),
        )?;
        family(
            encoder,
            &f.energy,
            per_device(devices, |d| float(d.energy_joules_total)),
        )?;
        family(
            encoder,
            &f.sm_clock,
            per_device(devices, |d| float(d.sm_clock_hertz)),
        )?;
        family(
            encoder,
            &f.memory_clock,
            per_device(devices, |d| float(d.memory_clock_hertz)),
        )?;
        family(
            encoder,
            &f.ecc_errors,
            per_device_by(devices, "type", |d| {
                [
                    ("corrected", int(d.ecc_corrected_total)),
                    ("uncorrected", int(d.ecc_uncorrected_total)),
                ]
            }),
        )?;
        family(
            encoder,
            &f.throttle,
            per_device_by(devices, "reason", |d| {
                d.throttle_reasons
                    .iter()
                    .map(|&(reason, active)| (reason.as_str(), Some(Value::Int(u64::from(active)))))
            }),
        )?;
        family(
            encoder,
            &f.process_memory,
            devices.iter().flat_map(|d| {
                d.processes.iter().flatten().filter_map(move |p| {
                    let bytes = p.used_memory_bytes?;
                    Some(((device_labels(d), [("pid", p.pid)]), Value::Int(bytes)))
                })
            }),
        )?;
        family(
            encoder,
            &f.pcie,
            per_device_by(devices, "direction", |d| {
                [
                    ("tx", float(d.pcie_tx_bytes_per_second)),
                    ("rx", float(d.pcie_rx_bytes_per_second)),
                ]
            }),
        )?;
    }
    single(encoder, &f.up, Some(Value::Int(u64::from(published.up))))?;
    single(encoder, &f.errors, Some(Value::Int(published.errors_total)))?;
    single(
        encoder,
        &f.last_success,
        published
            .last_success
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|since| Value::Float(since.as_secs_f64())),
    )
}
