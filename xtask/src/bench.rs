//! `cargo xtask bench`: multiproc against the machine's raw limits and CPython, in one run.
//!
//! 1. Builds `multiproc-benches` in release and runs it: multiproc's figures (names of the
//!    reference harness's `mp_bench.py`) and the raw limits of the same operations in Rust over
//!    libc/rustix (names of its `bench/limits/*.c`), alternating in the same rounds.
//! 2. Runs `benches/python/mp_twin.py` (CPython's multiprocessing, same figures) when `python3`
//!    is present.
//! 3. Keeps the raw outputs in `target/bench/<UTC label>/` (`rust.tsv`, `limits.tsv`,
//!    `python.tsv`, their `.err` files, `machine.txt`), prints every figure on stdout
//!    (`name<TAB>median<TAB>unit`; raw limits as `limit:<name>`, Python as `python:<name>`,
//!    because the three families share some names), and writes `docs/benchmarks.md`: a table
//!    with ratios to the limits (pairs in `benches/pairs.tsv`) and the targets.
//!
//! `--quick` (a smoke test) and `--only` (a partial run) write the Markdown report only into
//! the run's folder, never over `docs/benchmarks.md`.
//! `target/bench/<label>/` is laid out like the reference harness's results, so
//! `compare.py --runs target/bench/<label> --pairs benches/pairs.tsv` also works on it.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line task reports on stdout/stderr"
)]

use std::collections::HashMap;
use std::env;
use std::error::Error;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type Res<T> = Result<T, Box<dyn Error>>;

const USAGE: &str = "\
usage: cargo xtask bench [--quick] [--reps N] [--only GROUP|FAMILY[,...]] [--no-python]

Builds and runs multiproc-benches (release) and benches/python/mp_twin.py, keeps the raw
outputs in target/bench/<UTC label>/, prints every figure, and writes docs/benchmarks.md.

  --quick       tiny iteration counts: a smoke test (report kept in the run folder only)
  --reps N      repetitions (rounds) of every figure, in both suites
  --only LIST   groups (proc, proc.rss256MiB, pipe, pipe.roundtrip, pipe.throughput,
                listener, listener.roundtrip, locks,
                locks.uncontended, locks.contended2p, array, shm, shm.1MiB, shm.256MiB,
                sync, sync.pingpong, queue, pool, pool.create, pool.map,
                pool.apply_async, pool.imap_unordered, pool.cpu, executor, manager; a prefix
                selects its subgroups) and/or families
                (mp, limits) of multiproc-benches; a partial run (report kept in the run
                folder only)
  --no-python   skip the Python twin
";

/// How long each suite may run before it is killed.
const SUITE_TIMEOUT: Duration = Duration::from_secs(20 * 60);

#[derive(Debug, Default)]
struct Opts {
    quick: bool,
    reps: Option<u32>,
    only: Option<String>,
    python: bool,
}

fn parse<I, S>(args: I) -> Res<Option<Opts>>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut o = Opts {
        python: true,
        ..Opts::default()
    };
    let mut it = args.into_iter().map(|s| s.as_ref().to_string());
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{flag} needs a value\n\n{USAGE}"))
        };
        match flag.as_str() {
            "--quick" => o.quick = true,
            "--reps" => {
                let v = value()?;
                o.reps = Some(v.parse().map_err(|_| format!("bad --reps {v:?}"))?);
            }
            "--only" => o.only = Some(value()?),
            "--no-python" => o.python = false,
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}").into()),
        }
    }
    Ok(Some(o))
}

/// Entry point of `cargo xtask bench ARGS`.
pub(crate) fn run<I, S>(args: I) -> Res<()>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let Some(o) = parse(args)? else {
        return Ok(());
    };
    let root = project_root();
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target =
        env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |t| root.join(t));
    let started = SystemTime::now();
    let label = utc_label(started);
    let out = target.join("bench").join(&label);
    fs::create_dir_all(&out)?;

    // `--only limits` (raw limits only) has nothing to compare with Python.
    let only_limits = o.only.as_deref().is_some_and(|only| {
        let toks: Vec<&str> = only.split(',').filter(|t| !t.is_empty()).collect();
        toks.contains(&"limits") && !toks.contains(&"mp")
    });
    let python = python_version();
    let skip_python = if python.is_none() {
        Some("python3 not found")
    } else if !o.python {
        Some("--no-python")
    } else if only_limits {
        Some("--only limits")
    } else {
        None
    };
    let mut machine = machine_info();
    machine.push(("rustc".into(), command_line_output("rustc", &["--version"])));
    machine.push((
        "python".into(),
        match (&python, skip_python) {
            (Some(v), None) => v.clone(),
            (Some(v), Some(why)) => format!("{v} (twin skipped: {why})"),
            (None, _) => "absent (twin skipped)".into(),
        },
    ));
    machine.push(("date_utc".into(), utc_iso(started)));
    machine.push(("loadavg_before".into(), loadavg()));

    eprintln!("xtask bench: building multiproc-benches (release)");
    let st = Command::new(&cargo)
        .current_dir(&root)
        .args(["build", "--release", "-p", "multiproc-benches"])
        .status()?;
    if !st.success() {
        return Err(format!("cargo build --release -p multiproc-benches: {st}").into());
    }
    let bin = target.join("release").join("multiproc-benches");

    let mut bench_args: Vec<String> =
        vec!["--limits-out".into(), path_str(&out.join("limits.tsv"))];
    let mut py_args: Vec<String> = vec![path_str(&root.join("benches/python/mp_twin.py"))];
    if o.quick {
        bench_args.push("--quick".into());
        py_args.push("--quick".into());
    }
    if let Some(r) = o.reps {
        bench_args.extend(["--reps".into(), r.to_string()]);
        py_args.extend(["--reps".into(), r.to_string()]);
    }
    if let Some(only) = &o.only {
        bench_args.extend(["--only".into(), only.clone()]);
        // The Python twin has the same groups (and no raw limits).
        let groups: Vec<&str> = only
            .split(',')
            .filter(|g| !g.is_empty() && *g != "mp" && *g != "limits")
            .collect();
        if !groups.is_empty() {
            py_args.extend(["--only".into(), groups.join(",")]);
        }
    }

    eprintln!(
        "xtask bench: running multiproc-benches -> {}",
        out.display()
    );
    let t0 = Instant::now();
    let st = run_suite(&bin, &bench_args, &root, &out, "rust")?;
    let secs = t0.elapsed().as_secs_f64();
    eprintln!("xtask bench: multiproc-benches took {secs:.0} s");
    machine.push(("rust_suite_seconds".into(), format!("{secs:.0}")));
    if !st.success() {
        return Err(format!(
            "multiproc-benches failed ({st}); see {}",
            out.join("rust.err").display()
        )
        .into());
    }
    let mut py_ok = false;
    if let Some(why) = skip_python {
        eprintln!("xtask bench: Python twin skipped ({why})");
    } else {
        eprintln!("xtask bench: running benches/python/mp_twin.py");
        let t0 = Instant::now();
        let st = run_suite(Path::new("python3"), &py_args, &root, &out, "python")?;
        let secs = t0.elapsed().as_secs_f64();
        eprintln!("xtask bench: mp_twin.py took {secs:.0} s");
        machine.push(("python_suite_seconds".into(), format!("{secs:.0}")));
        py_ok = st.success();
        if !py_ok {
            eprintln!(
                "xtask bench: warning: mp_twin.py failed ({st}); see {}",
                out.join("python.err").display()
            );
        }
    }
    machine.push(("loadavg_after".into(), loadavg()));
    let mut mt = String::new();
    for (k, v) in &machine {
        let _ = writeln!(mt, "{k}\t{v}");
    }
    fs::write(out.join("machine.txt"), mt)?;

    let rust = Figures::load(&out.join("rust.tsv"));
    let lim = Figures::load(&out.join("limits.tsv"));
    let py = if py_ok {
        Figures::load(&out.join("python.tsv"))
    } else {
        Figures::default()
    };
    let mut stdout = String::new();
    for (prefix, f) in [("", &rust), ("limit:", &lim), ("python:", &py)] {
        for name in &f.order {
            let x = &f.map[name];
            let _ = writeln!(stdout, "{prefix}{name}\t{}\t{}", x.text, x.unit);
        }
    }
    print!("{stdout}");

    let pairs = load_pairs(&root.join("benches/pairs.tsv"))?;
    let mut cmd = String::from("cargo xtask bench");
    if o.quick {
        cmd += " --quick";
    }
    if let Some(r) = o.reps {
        let _ = write!(cmd, " --reps {r}");
    }
    if let Some(only) = &o.only {
        let _ = write!(cmd, " --only {only}");
    }
    if !o.python {
        cmd += " --no-python";
    }
    let rel_out = out.strip_prefix(&root).unwrap_or(&out);
    let report = Report {
        label: &label,
        out: rel_out,
        command: &cmd,
        machine: &machine,
        quick: o.quick,
        partial: o.only.is_some(),
        rust: &rust,
        lim: &lim,
        py: &py,
        pairs: &pairs,
    }
    .markdown();
    fs::write(out.join("benchmarks.md"), &report)?;
    if o.quick || o.only.is_some() {
        eprintln!(
            "xtask bench: report in {} (quick/partial run: docs/benchmarks.md left alone)",
            out.join("benchmarks.md").display()
        );
    } else {
        let doc = root.join("docs").join("benchmarks.md");
        fs::create_dir_all(root.join("docs"))?;
        fs::write(&doc, &report)?;
        eprintln!("xtask bench: wrote {}", doc.display());
    }
    Ok(())
}

fn project_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    dir.parent().unwrap_or(dir).to_path_buf()
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Runs one suite with stdout to `<stem>.tsv` and stderr to `<stem>.err` in `out`.
fn run_suite(prog: &Path, args: &[String], root: &Path, out: &Path, stem: &str) -> Res<ExitStatus> {
    let mut child = Command::new(prog)
        .args(args)
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(File::create(out.join(format!("{stem}.tsv")))?)
        .stderr(File::create(out.join(format!("{stem}.err")))?)
        .spawn()?;
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        if t0.elapsed() > SUITE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{} timed out after {:?}", prog.display(), SUITE_TIMEOUT).into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn command_line_output(prog: &str, args: &[&str]) -> String {
    Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// `Some("3.11.7")` when `python3` runs.
fn python_version() -> Option<String> {
    let v = command_line_output(
        "python3",
        &["-c", "import sys; print(sys.version.split()[0])"],
    );
    (v != "unknown").then_some(v)
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn machine_info() -> Vec<(String, String)> {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    vec![
        ("nproc".into(), nproc.to_string()),
        ("cpu".into(), cpu),
        ("kernel".into(), kernel),
    ]
}

// ------------------------------------------------------------------- dates ----

/// (year, month, day, hour, minute, second) in UTC.
fn utc_parts(t: SystemTime) -> (i64, u32, u32, u32, u32, u32) {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    let rem = rem as u32;
    (y, m, d, rem / 3600, rem / 60 % 60, rem % 60)
}

fn utc_label(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(t);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

fn utc_iso(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

// ----------------------------------------------------------------- figures ----

#[derive(Debug, Clone)]
struct Fig {
    value: f64,
    text: String,
    unit: String,
    /// (min, max) as printed in the `#spread` line.
    spread: Option<(String, String)>,
    /// (rotation group, value of each round) from the `#rounds` line.
    rounds: Option<(String, Vec<f64>)>,
}

#[derive(Debug, Default)]
struct Figures {
    order: Vec<String>,
    /// The last figure printed under each name.
    map: HashMap<String, Fig>,
    /// Every figure printed under each name, in order: a raw limit measured in several
    /// rotation groups (`pingpong.pipe.64B` next to the pipes and next to the pool) appears
    /// once per group.
    all: HashMap<String, Vec<Fig>>,
}

impl Figures {
    /// Reads `name<TAB>median<TAB>unit` lines, and `#spread` and `#rounds` lines from the
    /// sibling `.err` (the k-th such line of a name belongs to its k-th figure line).
    fn load(path: &Path) -> Self {
        let mut f = Self::default();
        let Ok(text) = fs::read_to_string(path) else {
            return f;
        };
        for line in text.lines() {
            let p: Vec<&str> = line.split('\t').collect();
            if line.starts_with('#') || p.len() != 3 {
                continue;
            }
            let Ok(value) = p[1].parse::<f64>() else {
                continue;
            };
            if !f.all.contains_key(p[0]) {
                f.order.push(p[0].to_string());
            }
            f.all.entry(p[0].to_string()).or_default().push(Fig {
                value,
                text: p[1].to_string(),
                unit: p[2].to_string(),
                spread: None,
                rounds: None,
            });
        }
        if let Ok(err) = fs::read_to_string(path.with_extension("err")) {
            let mut seen_spread: HashMap<String, usize> = HashMap::new();
            let mut seen_rounds: HashMap<String, usize> = HashMap::new();
            for line in err.lines() {
                let p: Vec<&str> = line.split('\t').collect();
                match (p.first().copied(), p.len()) {
                    (Some("#spread"), 7..) => {
                        let k = seen_spread.entry(p[1].to_string()).or_default();
                        if let Some(x) = f.all.get_mut(p[1]).and_then(|v| v.get_mut(*k)) {
                            x.spread = Some((p[2].to_string(), p[4].to_string()));
                        }
                        *k += 1;
                    }
                    (Some("#rounds"), 4..) => {
                        let vals: Option<Vec<f64>> =
                            p[3..].iter().map(|v| v.parse().ok()).collect();
                        let k = seen_rounds.entry(p[2].to_string()).or_default();
                        if let (Some(x), Some(vals)) =
                            (f.all.get_mut(p[2]).and_then(|v| v.get_mut(*k)), vals)
                        {
                            x.rounds = Some((p[1].to_string(), vals));
                        }
                        *k += 1;
                    }
                    _ => {}
                }
            }
        }
        for (name, v) in &f.all {
            if let Some(last) = v.last() {
                f.map.insert(name.clone(), last.clone());
            }
        }
        f
    }

    fn get(&self, name: &str) -> Option<&Fig> {
        self.map.get(name)
    }

    /// The figure `name` measured in the same rotation group as `with` (so the two can be
    /// compared round by round), else the last one printed.
    fn get_paired(&self, name: &str, with: Option<&Fig>) -> Option<&Fig> {
        let group = with.and_then(|w| w.rounds.as_ref()).map(|(g, _)| g);
        group
            .and_then(|g| {
                self.all.get(name).and_then(|v| {
                    v.iter()
                        .find(|x| x.rounds.as_ref().is_some_and(|(xg, _)| xg == g))
                })
            })
            .or_else(|| self.get(name))
    }
}

/// figure -> (limit figure, factor, why), in file order.
type Pairs = Vec<(String, String, f64, String)>;

fn load_pairs(path: &Path) -> Res<Pairs> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut v = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let p: Vec<&str> = line.split('\t').collect();
        if p.len() < 2 {
            continue;
        }
        let factor = p.get(2).and_then(|f| f.parse().ok()).unwrap_or(1.0);
        let why = p.get(3).unwrap_or(&"").to_string();
        v.push((p[0].to_string(), p[1].to_string(), factor, why));
    }
    Ok(v)
}

fn time_scale(unit: &str) -> Option<f64> {
    match unit {
        "ns" => Some(1e-9),
        "us" => Some(1e-6),
        "ms" => Some(1e-3),
        "s" => Some(1.0),
        _ => None,
    }
}

fn rate_scale(unit: &str) -> Option<f64> {
    match unit {
        "MB/s" => Some(1e6),
        "GB/s" => Some(1e9),
        "items/s" | "ops/s" | "tasks/s" | "x" => Some(1.0),
        _ => None,
    }
}

/// Cost of `a` relative to `b` (above 1: `a` is slower or lower-throughput than `b`).
/// Times: a/b; rates: b_rate/a_rate (the same cost ratio). `factor` multiplies `b`'s cost.
fn cost_ratio_of(a: f64, ua: &str, b: f64, ub: &str, factor: f64) -> Option<f64> {
    if let (Some(sa), Some(sb)) = (time_scale(ua), time_scale(ub)) {
        let (ca, cb) = (a * sa, b * sb * factor);
        return (cb > 0.0).then(|| ca / cb);
    }
    if let (Some(sa), Some(sb)) = (rate_scale(ua), rate_scale(ub)) {
        let (ra, rb) = (a * sa, b * sb / factor);
        return (ra > 0.0).then(|| rb / ra);
    }
    None
}

/// [`cost_ratio_of`] on the medians.
fn cost_ratio(a: &Fig, b: &Fig, factor: f64) -> Option<f64> {
    cost_ratio_of(a.value, &a.unit, b.value, &b.unit, factor)
}

/// The cost ratio of `a` to `b` from one run: the median of the per-round ratios when both
/// were measured in the same rounds (same rotation group), else the ratio of the medians.
/// The flag says which.
fn paired_ratio(a: &Fig, b: &Fig, factor: f64) -> Option<(f64, bool)> {
    let per_round: Option<Vec<f64>> = match (&a.rounds, &b.rounds) {
        (Some((ga, va)), Some((gb, vb))) if ga == gb && va.len() == vb.len() && !va.is_empty() => {
            va.iter()
                .zip(vb)
                .map(|(&x, &y)| cost_ratio_of(x, &a.unit, y, &b.unit, factor))
                .collect()
        }
        _ => None,
    };
    match per_round {
        Some(rs) => Some((median(&rs), true)),
        None => cost_ratio(a, b, factor).map(|r| (r, false)),
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// A paired ratio as a table cell; `*` marks a ratio of medians (not measured in the same rounds).
fn ratio_cell(r: Option<(f64, bool)>) -> String {
    match r {
        Some((r, true)) => g3(r),
        Some((r, false)) => format!("{}\\*", g3(r)),
        None => "-".into(),
    }
}

/// Three significant digits, as `%.3g` without exponents.
fn g3(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else if a >= 0.1 {
        format!("{x:.3}")
    } else if a >= 0.01 {
        format!("{x:.4}")
    } else {
        format!("{x:.2e}")
    }
}

fn cell(f: Option<&Fig>) -> String {
    match f {
        None => "-".into(),
        Some(x) => match &x.spread {
            Some((lo, hi)) => format!("{} {} ({lo}..{hi})", x.text, x.unit),
            None => format!("{} {}", x.text, x.unit),
        },
    }
}

struct Report<'a> {
    label: &'a str,
    out: &'a Path,
    command: &'a str,
    machine: &'a [(String, String)],
    quick: bool,
    partial: bool,
    rust: &'a Figures,
    lim: &'a Figures,
    py: &'a Figures,
    pairs: &'a Pairs,
}

/// How a target bounds its figure.
#[derive(Clone, Copy, Debug)]
enum Bound {
    /// The figure's cost / the limit's cost (times: figure / limit; rates: limit / figure)
    /// is at most this.
    CostAtMost(f64),
    /// The figure's throughput / the limit's throughput (the inverse of the cost ratio) is at
    /// least this.
    ThroughputAtLeast(f64),
    /// Python's cost / multiproc's cost on the same figure (how many times faster multiproc
    /// is) is at least this; `limit` is unused.
    VsPythonAtLeast(f64),
    /// The figure itself is at least this (a speed-up in `x`); `limit`, if not empty, is
    /// shown beside it as the machine's ceiling.
    AtLeast(f64),
}

/// One target of the issue: the figure against its limit, or against Python.
struct Target {
    what: &'static str,
    figure: &'static str,
    limit: &'static str,
    bound: Bound,
}

const fn at_most(
    what: &'static str,
    figure: &'static str,
    limit: &'static str,
    max: f64,
) -> Target {
    Target {
        what,
        figure,
        limit,
        bound: Bound::CostAtMost(max),
    }
}

const TARGETS: &[Target] = &[
    at_most(
        "fork start ≤ 1.5× raw fork+wait",
        "proc.start_join.fork",
        "proc.fork_exit_wait",
        1.5,
    ),
    at_most(
        "forkserver start ≤ 2× raw fork+wait",
        "proc.start_join.forkserver",
        "proc.fork_exit_wait",
        2.0,
    ),
    at_most(
        "spawn start ≤ 1.5× raw posix_spawn",
        "proc.start_join.spawn",
        "proc.posix_spawn_true_wait",
        1.5,
    ),
    at_most(
        "forkserver start ≤ 1.5× a raw forkserver round trip (request, fork, reap, status; its floor; not a target of the issue, shown as the floor of the forkserver row)",
        "proc.start_join.forkserver",
        "proc.forkserver_raw",
        1.5,
    ),
    at_most(
        "spawn start ≤ 1.5× posix_spawn of this executable exiting at once (its exec floor; not a target of the issue, shown as the floor of the row above)",
        "proc.start_join.spawn",
        "proc.posix_spawn_self_wait",
        1.5,
    ),
    at_most(
        "duplex pipe round trip ≤ 1.3× raw pipe ping-pong",
        "pipe.roundtrip.64B",
        "pingpong.pipe.64B",
        1.3,
    ),
    at_most(
        "Listener/Client round trip over a Unix socket ≤ 1.3× raw socketpair ping-pong",
        "listener.roundtrip.unix.64B",
        "pingpong.socketpair_stream.64B",
        1.3,
    ),
    at_most(
        "Listener/Client round trip over TCP loopback ≤ 1.3× raw TCP ping-pong",
        "listener.roundtrip.tcp.64B",
        "pingpong.tcp_loopback.64B",
        1.3,
    ),
    at_most(
        "uncontended Lock acquire+release ≤ 1.5× a pshared `sem_t` wait+post",
        "lock.uncontended.mp_Lock.acquire_release",
        "lock.uncontended.posix_sem_pshared",
        1.5,
    ),
    at_most(
        "`Value` += 1 under its lock ≤ 2× a pshared `sem_t` wait+post",
        "value.get_lock_increment.uncontended",
        "lock.uncontended.posix_sem_pshared",
        2.0,
    ),
    at_most(
        "Event ping-pong ≤ 1.5× raw shared-futex ping-pong",
        "event.pingpong",
        "pingpong.futex_shared",
        1.5,
    ),
    at_most(
        "Barrier(2) wait ≤ 1.5× raw shared-futex ping-pong",
        "barrier2.wait",
        "pingpong.futex_shared",
        1.5,
    ),
    at_most(
        "Condition ping-pong ≤ 1.5× raw shared-futex ping-pong",
        "condition.pingpong",
        "pingpong.futex_shared",
        1.5,
    ),
    Target {
        what: "two processes × 100,000 locked `Value` increments ≥ 20× Python's ops/s",
        figure: "lock.contended2p.value_get_lock_increment",
        limit: "",
        bound: Bound::VsPythonAtLeast(20.0),
    },
    Target {
        what: "duplex pipe, 64 KiB messages ≥ 1.2× Python's MB/s",
        figure: "pipe.throughput.64KiB",
        limit: "",
        bound: Bound::VsPythonAtLeast(1.2),
    },
    Target {
        what: "duplex pipe, 16 MiB messages ≥ 1.5× Python's MB/s",
        figure: "pipe.throughput.16MiB",
        limit: "",
        bound: Bound::VsPythonAtLeast(1.5),
    },
    Target {
        what: "`Queue`: 100,000 ints from one child ≥ 40× Python's items/s",
        figure: "queue.throughput.1p1c",
        limit: "",
        bound: Bound::VsPythonAtLeast(40.0),
    },
    Target {
        what: "`Queue`: 100,000 ints from four children ≥ 20× Python's items/s",
        figure: "queue.throughput.4p1c",
        limit: "",
        bound: Bound::VsPythonAtLeast(20.0),
    },
    Target {
        what: "`SimpleQueue`: 100,000 ints from one child ≥ 20× Python's items/s",
        figure: "simplequeue.throughput.1p1c",
        limit: "",
        bound: Bound::VsPythonAtLeast(20.0),
    },
    Target {
        what: "`SimpleQueue`: 100,000 ints from four children ≥ 20× Python's items/s",
        figure: "simplequeue.throughput.4p1c",
        limit: "",
        bound: Bound::VsPythonAtLeast(20.0),
    },
    at_most(
        "`Queue` int round trip (put → child get → put back) ≤ 1.5× raw shared-futex ping-pong",
        "queue.roundtrip.int",
        "pingpong.futex_shared",
        1.5,
    ),
    at_most(
        "`SimpleQueue` int round trip ≤ 1.5× raw shared-futex ping-pong",
        "simplequeue.roundtrip.int",
        "pingpong.futex_shared",
        1.5,
    ),
    Target {
        what: "`Pool.map` of 100,000 trivial tasks, default chunk size, ≥ 20× Python's tasks/s",
        figure: "pool.map.trivial.default_chunksize",
        limit: "",
        bound: Bound::VsPythonAtLeast(20.0),
    },
    Target {
        what: "`Pool.map` of 10,000 trivial tasks, chunk size 1, ≥ 10× Python's tasks/s",
        figure: "pool.map.trivial.chunksize1",
        limit: "",
        bound: Bound::VsPythonAtLeast(10.0),
    },
    at_most(
        "`Pool.apply_async(noop).get()` round trip ≤ 2× raw pipe ping-pong",
        "pool.apply_async.roundtrip",
        "pingpong.pipe.64B",
        2.0,
    ),
    Target {
        what: "`Pool.map` of 200 CPU tasks on 2 workers: speed-up over serial ≥ 1.8",
        figure: "pool.map.cpu200x_sum_range_2e5.speedup",
        limit: "cpu.parallel_speedup.2proc",
        bound: Bound::AtLeast(1.8),
    },
    Target {
        what: "`ProcessPoolExecutor.submit(noop).result()` round trip ≥ 20× Python's",
        figure: "executor.submit_result.roundtrip",
        limit: "",
        bound: Bound::VsPythonAtLeast(20.0),
    },
    Target {
        what: "`ProcessPoolExecutor.map` of 10,000 trivial calls, chunk size 1, ≥ 50× Python's tasks/s",
        figure: "executor.map.trivial.chunksize1",
        limit: "",
        bound: Bound::VsPythonAtLeast(50.0),
    },
    Target {
        what: "`Manager` dict: `d[k] = v` from a child ≥ 10× Python's",
        figure: "manager.dict.set_from_child",
        limit: "",
        bound: Bound::VsPythonAtLeast(10.0),
    },
    at_most(
        "`Manager` dict: `d[k] = v` from a child ≤ 2× raw socketpair ping-pong",
        "manager.dict.set_from_child",
        "pingpong.socketpair_stream.64B",
        2.0,
    ),
    Target {
        what: "`Manager` dict: `d.get(k)` from a child ≥ 10× Python's",
        figure: "manager.dict.get_from_child",
        limit: "",
        bound: Bound::VsPythonAtLeast(10.0),
    },
    at_most(
        "`Manager` dict: `d.get(k)` from a child ≤ 2× raw socketpair ping-pong",
        "manager.dict.get_from_child",
        "pingpong.socketpair_stream.64B",
        2.0,
    ),
    Target {
        what: "`Manager` queue: `put` from a child ≥ 10× Python's",
        figure: "manager.queue.put_from_child",
        limit: "",
        bound: Bound::VsPythonAtLeast(10.0),
    },
    Target {
        what: "`Manager` queue: `get` from a child ≥ 10× Python's",
        figure: "manager.queue.get_from_child",
        limit: "",
        bound: Bound::VsPythonAtLeast(10.0),
    },
    Target {
        what: "`Manager` dict shared by 8 children setting their own keys ≥ 10× Python's ops/s",
        figure: "manager.dict.set_8clients",
        limit: "",
        bound: Bound::VsPythonAtLeast(10.0),
    },
    Target {
        what: "1 MiB items through a `Queue` ≥ 0.5× memcpy bandwidth",
        figure: "queue.item_1MiB",
        limit: "mem.memcpy_256MiB_warm",
        bound: Bound::ThroughputAtLeast(0.5),
    },
    Target {
        what: "child writes 256 MiB into a fresh `SharedMemory` ≥ 0.9× raw shm_open+mmap",
        figure: "shm.child_write_256MiB_fresh",
        limit: "shm.child_write_256MiB_fresh",
        bound: Bound::ThroughputAtLeast(0.9),
    },
    Target {
        what: "parent reads those 256 MiB ≥ 0.9× raw shm_open+mmap",
        figure: "shm.parent_read_256MiB_after_child",
        limit: "shm.parent_read_256MiB_after_child",
        bound: Bound::ThroughputAtLeast(0.9),
    },
];

const EXTRA_TARGETS: &[Target] = &[
    at_most(
        "fork start from a 256 MiB parent ≤ 1.5× raw fork+wait from that parent",
        "proc.start_join.fork.rss256MiB",
        "proc.fork_exit_wait.rss256MiB",
        1.5,
    ),
    at_most(
        "forkserver start from a 256 MiB parent ≤ 2× raw fork+wait from a small parent (does not slow down)",
        "proc.start_join.forkserver.rss256MiB",
        "proc.fork_exit_wait",
        2.0,
    ),
    at_most(
        "spawn start from a 256 MiB parent ≤ 1.5× raw posix_spawn from that parent",
        "proc.start_join.spawn.rss256MiB",
        "proc.posix_spawn_true_wait.rss256MiB",
        1.5,
    ),
    Target {
        what: "child write + parent read of 256 MiB, end to end, ≥ 0.9× raw shm_open+mmap",
        figure: "shm.write_then_read_256MiB_end_to_end",
        limit: "shm.write_then_read_256MiB_end_to_end",
        bound: Bound::ThroughputAtLeast(0.9),
    },
];

/// Whether `bound` holds for `value` (a cost ratio for [`Bound::CostAtMost`], else the
/// higher-is-better ratio the bound names).
fn meets(bound: Bound, value: f64) -> bool {
    match bound {
        Bound::CostAtMost(max) => value <= max,
        Bound::ThroughputAtLeast(min) | Bound::VsPythonAtLeast(min) | Bound::AtLeast(min) => {
            value >= min
        }
    }
}

impl Report<'_> {
    /// Figure names in table order: the pairs file's order, then any other figure.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .pairs
            .iter()
            .map(|p| p.0.clone())
            .filter(|n| self.rust.get(n).is_some() || self.py.get(n).is_some())
            .collect();
        for n in self.rust.order.iter().chain(&self.py.order) {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        names
    }

    fn pair(&self, name: &str) -> Option<(&str, f64)> {
        self.pairs
            .iter()
            .find(|p| p.0 == name)
            .map(|p| (p.1.as_str(), p.2))
    }

    fn target_line(&self, t: &Target, s: &mut String) {
        let missing = |other: &str| ("not measured", format!("`{}` or {other} missing", t.figure));
        let (status, measured) = match t.bound {
            Bound::CostAtMost(_) | Bound::ThroughputAtLeast(_) => {
                let ours = self.rust.get(t.figure);
                match (ours, self.lim.get_paired(t.limit, ours)) {
                    (Some(f), Some(l)) => match paired_ratio(f, l, 1.0) {
                        Some((r, paired)) => {
                            let (value, label) = match t.bound {
                                Bound::ThroughputAtLeast(_) => (1.0 / r, " (throughput)"),
                                _ => (r, ""),
                            };
                            (
                                if meets(t.bound, value) {
                                    "**MET**"
                                } else {
                                    "**NOT MET**"
                                },
                                format!(
                                    "`{}` / `{}`{label} = **{}**",
                                    t.figure,
                                    t.limit,
                                    ratio_cell(Some((value, paired)))
                                ),
                            )
                        }
                        None => ("not measured", "units differ".into()),
                    },
                    _ => missing(&format!("`{}`", t.limit)),
                }
            }
            Bound::VsPythonAtLeast(_) => match (self.rust.get(t.figure), self.py.get(t.figure)) {
                (Some(ours), Some(theirs)) => match cost_ratio(theirs, ours, 1.0) {
                    Some(r) => (
                        if meets(t.bound, r) {
                            "**MET**"
                        } else {
                            "**NOT MET**"
                        },
                        format!(
                            "`{}`: multiproc {} vs Python {} = **{}×**",
                            t.figure,
                            cell(Some(ours)),
                            cell(Some(theirs)),
                            g3(r)
                        ),
                    ),
                    None => ("not measured", "units differ".into()),
                },
                _ => missing("its Python figure"),
            },
            Bound::AtLeast(_) => match self.rust.get(t.figure) {
                Some(f) => {
                    let ceiling = match self.lim.get_paired(t.limit, Some(f)) {
                        Some(l) if !t.limit.is_empty() => {
                            format!(" (ceiling `{}` = {} {})", t.limit, l.text, l.unit)
                        }
                        _ => String::new(),
                    };
                    (
                        if meets(t.bound, f.value) {
                            "**MET**"
                        } else {
                            "**NOT MET**"
                        },
                        format!("`{}` = **{} {}**{ceiling}", t.figure, f.text, f.unit),
                    )
                }
                None => ("not measured", format!("`{}` missing", t.figure)),
            },
        };
        let _ = writeln!(s, "| {} | {measured} | {status} |", t.what);
    }

    fn markdown(&self) -> String {
        let mut s = String::new();
        let w = &mut s;
        let _ = writeln!(w, "# Benchmarks\n");
        let _ = writeln!(
            w,
            "<!-- Generated by `cargo xtask bench` (xtask/src/bench.rs); edits are overwritten. -->\n"
        );
        if self.quick {
            let _ = writeln!(
                w,
                "> **Quick smoke run** (`--quick`): tiny iteration counts, not a measurement.\n"
            );
        }
        if self.partial {
            let _ = writeln!(
                w,
                "> **Partial run** (`--only`): some figures are missing.\n"
            );
        }
        let date = self
            .machine
            .iter()
            .find(|(k, _)| k == "date_utc")
            .map_or("?", |(_, v)| v.as_str());
        let _ = writeln!(
            w,
            "Measured on {date} by `{}` (run `{}`; raw outputs in `{}/`).",
            self.command,
            self.label,
            self.out.display()
        );
        let _ = writeln!(
            w,
            "Every figure is the median of several repetitions of an inner loop; `(min..max)` is the range over the repetitions."
        );
        let _ = writeln!(
            w,
            "multiproc's figures and the raw limits come from one process (`benches/src/`), and each multiproc figure was measured alternately with its limits, in the same rounds (the order rotated each round)."
        );
        let _ = writeln!(
            w,
            "The raw limits are the same operations written in Rust over libc/rustix (`benches/src/limits.rs`), replicating the C programs of the reference harness, whose figure names they carry."
        );
        let _ = writeln!(
            w,
            "Python is CPython's `multiprocessing` running `benches/python/mp_twin.py` (the measurement code of the reference `mp_bench.py`) right after; its ratios use the limits of the Rust run, measured a minute earlier."
        );
        let _ = writeln!(
            w,
            "The machine is small and shared: compare ratios within a run, not absolute figures across runs.\n"
        );

        let _ = writeln!(w, "## Machine\n");
        let _ = writeln!(w, "| | |\n|---|---|");
        for (k, v) in self.machine {
            let _ = writeln!(w, "| {k} | {v} |");
        }
        let _ = writeln!(w);

        let _ = writeln!(w, "## Figures\n");
        let _ = writeln!(
            w,
            "`/limit` columns: how many times the figure costs more than its raw limit (1 = at the limit; lower is better)."
        );
        let _ = writeln!(
            w,
            "For times (`ns`, `us`, `ms`) that is figure / limit; for rates (`MB/s` and `GB/s`: 10^6 and 10^9 bytes/s; `ops/s`) it is the cost ratio limit rate / figure rate, so in both cases lower is better."
        );
        let _ = writeln!(
            w,
            "`multiproc vs Python`: Python's cost / multiproc's cost, i.e. how many times faster multiproc is (above 1: multiproc is ahead)."
        );
        let _ = writeln!(
            w,
            "`multiproc/limit` is the median of the per-round ratios (figure and limit measured in the same round, one after the other); a trailing \\* marks a ratio of medians instead (not measured in the same rounds)."
        );
        let _ = writeln!(
            w,
            "`Python/limit` and `multiproc vs Python` are ratios of medians (Python runs in a separate process after the Rust suite)."
        );
        let _ = writeln!(
            w,
            "Which limit bounds which figure is in `benches/pairs.tsv`.\n"
        );
        let _ = writeln!(
            w,
            "| figure | multiproc | raw limit (name) | multiproc/limit | Python | Python/limit | multiproc vs Python |"
        );
        let _ = writeln!(w, "|---|---|---|---|---|---|---|");
        let mut behind = Vec::new();
        let mut compared = 0;
        for name in self.names() {
            let ours = self.rust.get(&name);
            let theirs = self.py.get(&name);
            let pair = self.pair(&name);
            let limit = pair.and_then(|(l, _)| self.lim.get_paired(l, ours));
            let factor = pair.map_or(1.0, |p| p.1);
            let lim_cell = match (pair, limit) {
                (Some((l, f)), x) if f != 1.0 => format!("`{l}` ×{f}: {}", cell(x)),
                (Some((l, _)), x) => format!("`{l}`: {}", cell(x)),
                (None, _) => "-".into(),
            };
            let ours_ratio = match (ours, limit) {
                (Some(f), Some(l)) => ratio_cell(paired_ratio(f, l, factor)),
                _ => "-".into(),
            };
            let py_ratio = match (theirs, limit) {
                (Some(f), Some(l)) => cost_ratio(f, l, factor).map_or("-".into(), g3),
                _ => "-".into(),
            };
            let vs = match (ours, theirs) {
                (Some(a), Some(b)) => match cost_ratio(b, a, 1.0) {
                    Some(r) => {
                        compared += 1;
                        if r <= 1.0 {
                            behind.push(name.clone());
                        }
                        format!("{}×", g3(r))
                    }
                    None => "-".into(),
                },
                _ => "-".into(),
            };
            let _ = writeln!(
                w,
                "| `{name}` | {} | {lim_cell} | {} | {} | {} | {vs} |",
                cell(ours),
                ours_ratio,
                cell(theirs),
                py_ratio
            );
        }
        let _ = writeln!(w);

        let _ = writeln!(w, "## Targets\n");
        let _ = writeln!(
            w,
            "The targets of the issues, with the ratios of the table above: cost ratios (figure / limit, lower is better) unless the line says throughput (figure / limit, higher is better) or Python (Python's cost / multiproc's, higher is better).\n"
        );
        let _ = writeln!(w, "| target | measured | status |\n|---|---|---|");
        for t in TARGETS {
            self.target_line(t, w);
        }
        let ahead = if compared == 0 {
            (
                "not measured (no Python figures)".to_string(),
                "not measured",
            )
        } else if behind.is_empty() {
            (format!("{compared} of {compared} figures ahead"), "**MET**")
        } else {
            (
                format!(
                    "{} of {compared} figures ahead; behind: {}",
                    compared - behind.len(),
                    behind
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "**NOT MET**",
            )
        };
        let _ = writeln!(
            w,
            "| every figure ahead of Python's | {} | {} |",
            ahead.0, ahead.1
        );
        let _ = writeln!(
            w,
            "\nFurther checks (not targets of the issues): the start figures from a parent holding 256 MiB, where fork slows down and forkserver and spawn should not; the 256 MiB `SharedMemory` scenario end to end.\n"
        );
        let _ = writeln!(w, "| check | measured | status |\n|---|---|---|");
        for t in EXTRA_TARGETS {
            self.target_line(t, w);
        }
        let _ = writeln!(w);

        let _ = writeln!(w, "## Raw limits\n");
        let _ = writeln!(
            w,
            "Every raw limit of this run (names of the reference harness's `bench/limits/*.c`, plus the `.rss256MiB` variants).\n"
        );
        let _ = writeln!(w, "| limit | median (min..max) |\n|---|---|");
        for n in &self.lim.order {
            let _ = writeln!(w, "| `{n}` | {} |", cell(self.lim.get(n)));
        }
        // The hand-written reading of the figures (what limits what, why a target is missed)
        // lives in benches/ANALYSIS.md so that regenerating this file keeps it.
        if let Ok(analysis) = std::fs::read_to_string(project_root().join("benches/ANALYSIS.md")) {
            let _ = writeln!(w, "\n{}", analysis.trim_end());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(utc_iso(t), "2023-11-14T22:13:20Z");
        assert_eq!(utc_label(UNIX_EPOCH), "19700101T000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(utc_iso(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn ratios() {
        let f = |v: f64, u: &str| Fig {
            value: v,
            text: v.to_string(),
            unit: u.into(),
            spread: None,
            rounds: None,
        };
        assert_eq!(cost_ratio(&f(300.0, "us"), &f(150.0, "us"), 1.0), Some(2.0));
        assert_eq!(cost_ratio(&f(1.0, "ms"), &f(500.0, "us"), 1.0), Some(2.0));
        assert_eq!(
            cost_ratio(&f(500.0, "MB/s"), &f(1000.0, "MB/s"), 1.0),
            Some(2.0)
        );
        assert_eq!(cost_ratio(&f(1.0, "us"), &f(1.0, "MB/s"), 1.0), None);

        // Per-round ratios when both were measured in the same rounds, else medians.
        let mut a = f(10.0, "us");
        let mut b = f(5.0, "us");
        a.rounds = Some(("1".into(), vec![10.0, 30.0, 12.0]));
        b.rounds = Some(("1".into(), vec![5.0, 10.0, 12.0]));
        assert_eq!(paired_ratio(&a, &b, 1.0), Some((2.0, true)));
        b.rounds = Some(("2".into(), vec![5.0, 10.0, 12.0]));
        assert_eq!(paired_ratio(&a, &b, 1.0), Some((2.0, false)));
    }

    #[test]
    fn bounds() {
        assert!(meets(Bound::CostAtMost(1.5), 1.5));
        assert!(!meets(Bound::CostAtMost(1.5), 1.6));
        assert!(meets(Bound::ThroughputAtLeast(0.9), 0.95));
        assert!(!meets(Bound::ThroughputAtLeast(0.9), 0.85));
        assert!(meets(Bound::VsPythonAtLeast(20.0), 25.0));
        assert!(!meets(Bound::VsPythonAtLeast(20.0), 19.0));
        // A rate figure at 0.8 of its limit's rate costs 1.25× the limit: throughput 0.8.
        let r = cost_ratio_of(0.8, "GB/s", 1.0, "GB/s", 1.0).unwrap_or(0.0);
        assert!((1.0 / r - 0.8).abs() < 1e-12);
    }
}
