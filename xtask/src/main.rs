//! Project tasks (matklad's xtask pattern, std only).
//!
//! - `cargo xtask demo NAME` runs one example and checks its output;
//!   `cargo xtask demo --all` runs every example and fails if one fails.
//! - `cargo xtask bench [--quick]` runs the benchmarks (see `bench.rs`).
//! - `cargo xtask ci` runs what CI runs: fmt --check, clippy -D warnings, the tests, the demos.
//!
//! An example states what its output must contain in `// expect: TEXT` comments: each TEXT must
//! appear in some line of its stdout. `// expect-lines: N` requires exactly N lines.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bench;

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let mut args = env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let result = match task.as_str() {
        "demo" => demo(&rest),
        "bench" => bench::run(rest),
        "ci" => ci(),
        _ => {
            eprintln!("usage: cargo xtask <demo NAME|demo --all|bench [--quick]|ci>");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {task}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    dir.parent().unwrap_or(dir).to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(cmd: &mut Command) -> Res<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd.status()?;
    if !status.success() {
        return Err(format!("{cmd:?} failed: {status}").into());
    }
    Ok(())
}

/// The example names, from `examples/*.rs` (every file but `lib.rs`).
fn examples() -> Res<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("examples"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".rs").map(str::to_string))
        .filter(|n| n != "lib")
        .collect();
    names.sort();
    Ok(names)
}

fn demo(args: &[String]) -> Res<()> {
    let names = match args.first().map(String::as_str) {
        Some("--all") => examples()?,
        Some(name) => vec![name.to_string()],
        None => {
            return Err(format!(
                "usage: cargo xtask demo NAME|--all; examples: {}",
                examples()?.join(", ")
            )
            .into());
        }
    };
    run(cargo().args(["build", "--quiet", "-p", "multiproc-examples", "--examples"]))?;
    let mut failed = Vec::new();
    for name in &names {
        match demo_one(name) {
            Ok(()) => eprintln!("demo {name}: ok"),
            Err(e) => {
                eprintln!("demo {name}: FAILED: {e}");
                failed.push(name.clone());
            }
        }
    }
    if failed.is_empty() {
        eprintln!("{} demos passed", names.len());
        Ok(())
    } else {
        Err(format!(
            "{} of {} demos failed: {}",
            failed.len(),
            names.len(),
            failed.join(", ")
        )
        .into())
    }
}

fn demo_one(name: &str) -> Res<()> {
    let source = std::fs::read_to_string(root().join("examples").join(format!("{name}.rs")))
        .map_err(|e| format!("no example {name}: {e}"))?;
    let output = cargo()
        .args([
            "run",
            "--quiet",
            "-p",
            "multiproc-examples",
            "--example",
            name,
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    if !output.status.success() {
        return Err(format!("exited with {}", output.status).into());
    }
    for line in source.lines().map(str::trim) {
        if let Some(want) = line.strip_prefix("// expect: ")
            && !stdout.lines().any(|l| l.contains(want))
        {
            return Err(format!("output has no line containing {want:?}").into());
        }
        if let Some(n) = line.strip_prefix("// expect-lines: ") {
            let n: usize = n.parse()?;
            let got = stdout.lines().count();
            if got != n {
                return Err(format!("expected {n} lines of output, got {got}").into());
            }
        }
    }
    Ok(())
}

fn ci() -> Res<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args(["test", "--workspace"]))?;
    demo(&["--all".to_string()])
}
