//! Replays every input kept in `fuzz/regressions/<target>/` (the crashes the fuzzer found,
//! and hand-written seeds) through its target, so `cargo test --workspace` checks them all.
//! Then a few thousand inputs from a fixed-seed generator, mutating those files, as a smoke
//! run of each target without a fuzzing engine.

use std::path::{Path, PathBuf};

#[global_allocator]
static ALLOC: multiproc_fuzz::Counting = multiproc_fuzz::Counting;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("regressions")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

/// One test, so that the targets run one at a time (the allocation bound reads a global).
#[test]
fn every_kept_input_passes_and_mutations_of_them_too() {
    for &(target, run) in multiproc_fuzz::TARGETS {
        let kept = inputs(target);
        assert!(!kept.is_empty(), "regressions/{target}/ holds no input");
        for (path, bytes) in &kept {
            eprintln!("{target}: {}", path.display());
            run(bytes);
        }
        // xorshift64*: deterministic, no dependency.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        for _ in 0..2000 {
            let mut bytes = kept[next() as usize % kept.len()].1.clone();
            for _ in 0..1 + next() % 4 {
                let r = next();
                match r % 4 {
                    0 if !bytes.is_empty() => {
                        let i = (r >> 8) as usize % bytes.len();
                        bytes[i] = (r >> 32) as u8;
                    }
                    1 => bytes.insert(
                        (r >> 8) as usize % (bytes.len() + 1),
                        [0xff, 0x00, 0xfe, 0x7f][(r >> 40) as usize % 4],
                    ),
                    2 if !bytes.is_empty() => {
                        bytes.truncate((r >> 8) as usize % bytes.len());
                    }
                    _ => bytes.extend_from_slice(&(r as u32).to_be_bytes()),
                }
            }
            run(&bytes);
        }
    }
}
