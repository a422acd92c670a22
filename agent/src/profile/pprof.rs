//! Folded stacks of one profile -> pprof (`<mode>.pb.gz`), the format `go tool pprof`,
//! Pyroscope, Parca and speedscope read; and pprof files -> [`Folded`] again, so that
//! baselines and diffs take either format.
//!
//! The messages are written by hand with `prost`'s derive from the public
//! [profile.proto](https://github.com/google/pprof/blob/main/proto/profile.proto) (field
//! numbers and types as there): a dozen small messages that have not changed in years do
//! not justify a build-time protobuf compiler (protoc is not on build hosts; protox would
//! add a build-time parser for the same result).
//!
//! Each distinct frame name is one `Function` and one `Location` (we keep names, not
//! addresses, once symbolized). The process name is not a frame in pprof but a `process`
//! label on each sample, with `pid`, `cgroup` and, for systemd services, `unit`: readers
//! group and filter by labels (`go tool pprof -tagfocus`, Pyroscope's label selectors).
//! Kernel frames keep their `_[k]` suffix, off-CPU states and locks stay leaf frames, as in
//! the folded files.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
};

use flate2::{Compression, read::GzDecoder, write::GzEncoder};
use prost::Message as _;

use super::{Mode, stack::Folded};

#[derive(Debug, thiserror::Error)]
pub enum PprofError {
    #[error("not a gzip'd or plain pprof profile")]
    Decode(#[source] prost::DecodeError),
    #[error("decompressing")]
    Gzip(#[source] std::io::Error),
    #[error("the profile refers to {what} {id}, which it does not define")]
    Dangling { what: &'static str, id: u64 },
    #[error("the profile has no sample type")]
    NoSampleType,
}

/// `profile.proto`'s `Profile`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    /// Index 0 must be "".
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "7")]
    pub drop_frames: i64,
    #[prost(int64, tag = "8")]
    pub keep_frames: i64,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// Leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    /// Innermost (inlined) first.
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
    #[prost(bool, tag = "5")]
    pub is_folded: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
    #[prost(int64, tag = "3")]
    pub column: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}

/// Who a sample belongs to: its pprof labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SampleLabels {
    pub process: String,
    pub pid: u32,
    /// Thread id, when grouped per thread (the thread's frame is the first one).
    pub tid: Option<u32>,
    /// cgroup v2 path, when known.
    pub cgroup: Option<String>,
}

impl SampleLabels {
    /// The systemd unit of a cgroup path: its innermost `.service` or `.scope` component.
    pub fn unit(&self) -> Option<&str> {
        self.cgroup.as_deref().and_then(|path| {
            path.rsplit('/')
                .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        })
    }
}

/// One sample to export: frames root to leaf, without the process name (a label).
#[derive(Debug, Clone)]
pub struct ExportSample<'a> {
    pub frames: &'a [String],
    /// In the folded file's unit: samples (cpu) or microseconds (offcpu, locks).
    pub weight: u64,
    /// Waits (offcpu) or contentions (locks) behind the weight; unused for cpu.
    pub count: u64,
    pub labels: &'a SampleLabels,
}

/// What the profile as a whole says.
#[derive(Debug, Clone)]
pub struct ExportMeta {
    pub mode: Mode,
    /// On-CPU sampling frequency, for `cpu/nanoseconds` and the period.
    pub frequency: u64,
    /// Start, nanoseconds since the Unix epoch.
    pub time_nanos: i64,
    pub duration_nanos: i64,
    pub comment: String,
    /// Source file of function names, where debug info told it.
    pub sources: HashMap<String, String>,
}

/// Builds the profile. Sample types say what they count: cpu `samples/count` and
/// `cpu/nanoseconds` (samples × the sampling period; `samples` is the default), offcpu
/// `wait/nanoseconds` (recorded at microsecond resolution; the default) and `waits/count`,
/// locks `wait/nanoseconds` and `contentions/count`.
pub fn build(samples: &[ExportSample<'_>], meta: &ExportMeta) -> Profile {
    let mut strings = StringTable::default();
    let mut profile = Profile::default();
    let period_ns = 1_000_000_000 / meta.frequency.max(1) as i64;
    let value_type = |strings: &mut StringTable, t: &str, u: &str| ValueType {
        r#type: strings.index(t),
        unit: strings.index(u),
    };
    match meta.mode {
        Mode::Cpu => {
            profile.sample_type = vec![
                value_type(&mut strings, "samples", "count"),
                value_type(&mut strings, "cpu", "nanoseconds"),
            ];
            profile.period_type = Some(value_type(&mut strings, "cpu", "nanoseconds"));
            profile.period = period_ns;
            profile.default_sample_type = strings.index("samples");
        }
        Mode::OffCpu | Mode::Locks => {
            let events = if meta.mode == Mode::Locks {
                "contentions"
            } else {
                "waits"
            };
            profile.sample_type = vec![
                value_type(&mut strings, "wait", "nanoseconds"),
                value_type(&mut strings, events, "count"),
            ];
            profile.period_type = Some(value_type(&mut strings, "wait", "nanoseconds"));
            profile.period = 1000;
            profile.default_sample_type = strings.index("wait");
        }
    }
    let keys = [
        strings.index("process"),
        strings.index("pid"),
        strings.index("cgroup"),
        strings.index("unit"),
        strings.index("tid"),
    ];
    let mut locations: HashMap<&str, u64> = HashMap::new();
    for sample in samples {
        let location_id = sample
            .frames
            .iter()
            .rev()
            .map(|frame| {
                let next = locations.len() as u64 + 1;
                *locations.entry(frame.as_str()).or_insert_with(|| {
                    let name = strings.index(frame);
                    let filename = meta
                        .sources
                        .get(frame.as_str())
                        .map_or(0, |f| strings.index(f));
                    profile.function.push(Function {
                        id: next,
                        name,
                        system_name: name,
                        filename,
                        ..Function::default()
                    });
                    profile.location.push(Location {
                        id: next,
                        line: vec![Line {
                            function_id: next,
                            ..Line::default()
                        }],
                        ..Location::default()
                    });
                    next
                })
            })
            .collect();
        let weight = i64::try_from(sample.weight).unwrap_or(i64::MAX);
        let value = match meta.mode {
            Mode::Cpu => vec![weight, weight.saturating_mul(period_ns)],
            Mode::OffCpu | Mode::Locks => vec![
                weight.saturating_mul(1000),
                i64::try_from(sample.count).unwrap_or(i64::MAX),
            ],
        };
        let l = sample.labels;
        let mut label = vec![
            Label {
                key: keys[0],
                str: strings.index(&l.process),
                ..Label::default()
            },
            Label {
                key: keys[1],
                num: i64::from(l.pid),
                ..Label::default()
            },
        ];
        if let Some(tid) = l.tid {
            label.push(Label {
                key: keys[4],
                num: i64::from(tid),
                ..Label::default()
            });
        }
        if let Some(cgroup) = &l.cgroup {
            label.push(Label {
                key: keys[2],
                str: strings.index(cgroup),
                ..Label::default()
            });
        }
        if let Some(unit) = l.unit() {
            label.push(Label {
                key: keys[3],
                str: strings.index(unit),
                ..Label::default()
            });
        }
        profile.sample.push(Sample {
            location_id,
            value,
            label,
        });
    }
    profile.time_nanos = meta.time_nanos;
    profile.duration_nanos = meta.duration_nanos;
    profile.comment = vec![strings.index(&meta.comment)];
    profile.string_table = strings.strings;
    profile
}

/// The profile, gzip'd as pprof files are.
pub fn write_gz(profile: &Profile, out: impl std::io::Write) -> std::io::Result<()> {
    let mut gz = GzEncoder::new(out, Compression::default());
    gz.write_all(&profile.encode_to_vec())?;
    gz.finish()?.flush()
}

/// Reads a pprof profile, gzip'd or not, into folded stacks: the `process` label (when
/// there is one) as the root frame, inlined frames expanded, weights from the default
/// sample type (else the last one, as pprof readers do).
pub fn read_folded(bytes: &[u8]) -> Result<Folded, PprofError> {
    let mut plain = Vec::new();
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        GzDecoder::new(bytes)
            .read_to_end(&mut plain)
            .map_err(PprofError::Gzip)?;
        &plain[..]
    } else {
        bytes
    };
    let profile = Profile::decode(bytes).map_err(PprofError::Decode)?;
    let string = |i: i64| -> &str {
        usize::try_from(i)
            .ok()
            .and_then(|i| profile.string_table.get(i))
            .map_or("", String::as_str)
    };
    if profile.sample_type.is_empty() {
        return Err(PprofError::NoSampleType);
    }
    let value_index = profile
        .sample_type
        .iter()
        .position(|t| profile.default_sample_type != 0 && t.r#type == profile.default_sample_type)
        .unwrap_or(profile.sample_type.len() - 1);
    let functions: HashMap<u64, &str> = profile
        .function
        .iter()
        .map(|f| (f.id, string(f.name)))
        .collect();
    let locations: HashMap<u64, &Location> = profile.location.iter().map(|l| (l.id, l)).collect();
    let process_key = profile.string_table.iter().position(|s| s == "process");
    let mut folded = Folded::default();
    for sample in &profile.sample {
        let Some(&weight) = sample.value.get(value_index) else {
            continue;
        };
        let Ok(weight) = u64::try_from(weight) else {
            continue;
        };
        let mut frames: Vec<String> = Vec::new();
        for id in sample.location_id.iter().rev() {
            let location = locations.get(id).ok_or(PprofError::Dangling {
                what: "location",
                id: *id,
            })?;
            if location.line.is_empty() {
                frames.push(format!("0x{:x}", location.address));
            }
            for line in location.line.iter().rev() {
                let name = functions
                    .get(&line.function_id)
                    .ok_or(PprofError::Dangling {
                        what: "function",
                        id: line.function_id,
                    })?;
                frames.push((*name).to_owned());
            }
        }
        if let Some(process) = sample
            .label
            .iter()
            .find(|l| process_key.is_some_and(|k| l.key == k as i64))
        {
            frames.insert(0, string(process.str).to_owned());
        }
        folded.add(&frames, weight);
    }
    Ok(folded)
}

#[derive(Default)]
struct StringTable {
    strings: Vec<String>,
    index: HashMap<String, i64>,
}

impl StringTable {
    fn index(&mut self, s: &str) -> i64 {
        if self.strings.is_empty() {
            self.strings.push(String::new());
            self.index.insert(String::new(), 0);
        }
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.strings.len() as i64;
        self.strings.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(s: &str) -> Vec<String> {
        s.split(';').map(str::to_owned).collect()
    }

    fn meta(mode: Mode) -> ExportMeta {
        ExportMeta {
            mode,
            frequency: 100,
            time_nanos: 1,
            duration_nanos: 2,
            comment: "test".into(),
            sources: HashMap::from([("work".to_owned(), "/src/work.c".to_owned())]),
        }
    }

    #[test]
    fn cpu_profile_round_trips_to_the_same_folded_stacks() {
        let app = SampleLabels {
            process: "app".into(),
            pid: 42,
            tid: None,
            cgroup: Some("/system.slice/app.service".into()),
        };
        let a = frames("main;work;memcpy");
        let b = frames("main;idle_[k]");
        let samples = [
            ExportSample {
                frames: &a,
                weight: 7,
                count: 7,
                labels: &app,
            },
            ExportSample {
                frames: &b,
                weight: 3,
                count: 3,
                labels: &app,
            },
        ];
        let profile = build(&samples, &meta(Mode::Cpu));
        let s = |i: i64| profile.string_table[i as usize].as_str();
        assert_eq!(s(0), "");
        let types: Vec<(&str, &str)> = profile
            .sample_type
            .iter()
            .map(|t| (s(t.r#type), s(t.unit)))
            .collect();
        assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
        assert_eq!(profile.sample[0].value, [7, 7 * 10_000_000]);
        // Leaf first.
        let leaf = profile.sample[0].location_id[0];
        assert_eq!(s(profile.function[leaf as usize - 1].name), "memcpy");
        let work = profile.sample[0].location_id[1] as usize - 1;
        assert_eq!(s(profile.function[work].name), "work");
        assert_eq!(s(profile.function[work].filename), "/src/work.c");
        assert_eq!(
            profile.function[leaf as usize - 1].filename,
            0,
            "no file known"
        );
        let labels: Vec<(&str, String)> = profile.sample[0]
            .label
            .iter()
            .map(|l| {
                (
                    s(l.key),
                    if l.str != 0 {
                        s(l.str).to_owned()
                    } else {
                        l.num.to_string()
                    },
                )
            })
            .collect();
        assert_eq!(
            labels,
            [
                ("process", "app".to_owned()),
                ("pid", "42".to_owned()),
                ("cgroup", "/system.slice/app.service".to_owned()),
                ("unit", "app.service".to_owned())
            ]
        );

        let mut gz = Vec::new();
        write_gz(&profile, &mut gz).unwrap();
        let back = read_folded(&gz).unwrap();
        let mut expected = Folded::default();
        expected.add(&frames("app;main;work;memcpy"), 7);
        expected.add(&frames("app;main;idle_[k]"), 3);
        assert_eq!(back, expected);
    }

    #[test]
    fn wait_profiles_count_nanoseconds() {
        let labels = SampleLabels {
            process: "db".into(),
            pid: 1,
            tid: Some(7),
            cgroup: None,
        };
        let f = frames("main;read;[sleeping]");
        let profile = build(
            &[ExportSample {
                frames: &f,
                weight: 5,
                count: 2,
                labels: &labels,
            }],
            &meta(Mode::OffCpu),
        );
        let s = |i: i64| profile.string_table[i as usize].as_str();
        let types: Vec<(&str, &str)> = profile
            .sample_type
            .iter()
            .map(|t| (s(t.r#type), s(t.unit)))
            .collect();
        assert_eq!(types, [("wait", "nanoseconds"), ("waits", "count")]);
        assert_eq!(s(profile.default_sample_type), "wait");
        assert_eq!(profile.sample[0].value, [5000, 2]);
        // process, pid, tid; no cgroup, no unit.
        assert_eq!(profile.sample[0].label.len(), 3);
        assert_eq!(profile.sample[0].label[2].num, 7);
        // Not gzip'd is accepted too.
        let back = read_folded(&profile.encode_to_vec()).unwrap();
        assert_eq!(
            back.lines().collect::<Vec<_>>(),
            ["db;main;read;[sleeping] 5000"]
        );
    }

    #[test]
    fn garbage_and_dangling_ids_are_errors() {
        assert!(matches!(
            read_folded(b"definitely not protobuf \xff\xff"),
            Err(PprofError::Decode(_))
        ));
        let profile = Profile {
            sample_type: vec![ValueType { r#type: 1, unit: 1 }],
            sample: vec![Sample {
                location_id: vec![9],
                value: vec![1],
                label: Vec::new(),
            }],
            string_table: vec![String::new(), "x".into()],
            ..Profile::default()
        };
        let err = read_folded(&profile.encode_to_vec()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the profile refers to location 9, which it does not define"
        );
    }
}
