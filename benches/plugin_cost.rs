//! Plugin cost: `cleaner-basic` as a wasm component through kiln's runtime against the same
//! cleaning logic compiled natively and called directly, per record, at batch sizes 1, 64 and
//! 1024; and the cost of instantiating a plugin from the precompiled cache.
//!
//! Then the same for the Python and JavaScript ports of the cleaner (`plugins/python/cleaner-py`,
//! `plugins/js/cleaner-js`, built with componentize-py / componentize-js, installed by kiln on
//! first use) against the Rust component: per-record cost, component size, the first load
//! (compile into the cache), a load from the cache, a fresh instance, and what the Python
//! cleaner adds to a pilot (`--pilot-secs S`, default 130, the README pilot's wall time here).
//! `--rust-only` skips them.
//!
//! Run: `cargo bench --bench plugin_cost` (add `-- --records N` to change the workload, `--only
//! plugin` or `--only native` to repeat one side only, for a profiler).

use std::path::Path;
use std::time::{Duration, Instant};

use kiln::plugin::{CleanOutcome, PluginSpec, Runtime, Sample};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// A deterministic workload: realistic instruction/response lengths, with some leaked markers,
/// repetitions and near-duplicates so that every cleaning path runs.
fn workload(n: usize) -> Vec<Sample> {
    let subjects = ["rivers", "volcanoes", "planets", "spiders", "bridges", "novels", "glaciers", "violins", "deserts", "markets", "comets", "orchards"];
    let verbs = ["Describe", "Explain", "List", "Compare", "Summarise", "Name"];
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    (0..n)
        .map(|i| {
            let r = next();
            let subj = subjects[(r % subjects.len() as u64) as usize];
            let verb = verbs[((r >> 8) % verbs.len() as u64) as usize];
            let instruction = format!("{verb} {} interesting facts about {subj} for a curious reader, item {}.", 2 + (r >> 16) % 6, (r >> 20) % 97);
            let mut response: String = (0..(20 + (r >> 24) % 60))
                .map(|k| ["the", subj, "are", "known", "for", "their", "long", "history", "and", "shape", "in", "many", "regions"][((r >> (k % 40)) as usize + k as usize) % 13])
                .collect::<Vec<_>>()
                .join(" ");
            match i % 10 {
                3 => response.push_str("\n\nInstruction: write another one"),
                7 => response = "again and again ".repeat(20),
                _ => {}
            }
            let mut s: Sample = serde_json::from_value(serde_json::json!({
                "id": format!("b-{i:06}"), "instruction_type": "open-qa", "instruction": instruction, "response": response
            }))
            .unwrap();
            s.response_generation.completion_tokens = 40;
            s
        })
        .collect()
}

fn seeds() -> Vec<String> {
    std::fs::read_to_string(root().join("data/seeds.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["instruction"].as_str().unwrap().to_string())
        .collect()
}

/// The native path: the same conversions the component's glue does, then the same logic.
fn native_clean(cfg: &cleaner_basic::Config, reference: &kiln_text::NearDupIndex, batch: &[Sample]) -> Vec<CleanOutcome> {
    let texts: Vec<cleaner_basic::Texts> = batch
        .iter()
        .map(|s| cleaner_basic::Texts { id: s.id.clone(), instruction: s.instruction.clone(), response: s.response.clone() })
        .collect();
    cleaner_basic::clean(cfg, reference, &texts)
        .into_iter()
        .zip(batch)
        .map(|(o, s)| match o {
            cleaner_basic::Outcome::Keep { instruction, response, notes } => {
                let mut sample = s.clone();
                if let Some(instruction) = instruction {
                    sample.instruction = instruction;
                }
                if let Some(response) = response {
                    sample.response = response;
                }
                sample.metadata.extend(notes);
                CleanOutcome::Keep { sample }
            }
            cleaner_basic::Outcome::Drop { code, detail } => CleanOutcome::Dropped { code, detail },
        })
        .collect()
}

/// The value after `--name` on the command line, parsed.
fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    let v = args.iter().position(|a| a == name).and_then(|i| args.get(i + 1))?;
    Some(v.parse().unwrap_or_else(|_| panic!("{name} takes a number, got {v}")))
}

/// Nanoseconds per record of cleaning `data` in batches of each size (best of `reps`).
fn per_record(w: &mut kiln::plugin::Worker, data: &[Sample], batches: &[usize], reps: usize) -> Vec<f64> {
    batches
        .iter()
        .map(|&b| best_of(reps, || data.chunks(b).map(|c| w.clean(c).unwrap().len()).sum()).as_nanos() as f64 / data.len() as f64)
        .collect()
}

/// A whole load from the warm cache (read, hash, deserialise, instantiate, info, configure),
/// and a fresh configured instance from the loaded component.
fn instantiation(rt: &Runtime, spec: &PluginSpec, plugin: &kiln::plugin::Plugin, reps: usize) -> (Duration, Duration) {
    let load = best_of(reps, || {
        rt.load(spec).unwrap();
        1
    });
    let fresh = best_of(2 * reps, || {
        let mut w = plugin.worker(1);
        w.ready().unwrap();
        1
    });
    (load, fresh)
}

fn best_of<F: FnMut() -> usize>(reps: usize, mut f: F) -> Duration {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed()
        })
        .min()
        .unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let records: usize = arg(&args, "--records").unwrap_or(4096);
    // `--only plugin` or `--only native`: time one side alone (for a profiler).
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    let built = kiln::plugin::build::build_workspace(&root().join("plugins"), &root().join("plugins/dist")).expect("build plugins");
    let path = built.iter().find(|b| b.name == "cleaner-basic").expect("cleaner-basic built").path.clone();
    let seed_list = seeds();
    let config = serde_json::json!({ "reference_instructions": seed_list });
    let cfg = cleaner_basic::parse_config(&config.to_string()).unwrap();
    let reference = cleaner_basic::reference_index(&cfg, &[]);
    let data = workload(records);

    let cache = tempfile::tempdir().unwrap();
    let rt = Runtime::new(Some(cache.path().to_path_buf())).unwrap();
    let mut spec = PluginSpec::new(&path);
    spec.config = config.clone();
    let t = Instant::now();
    let plugin = rt.load(&spec).unwrap();
    let cold = t.elapsed();

    // Same answers both ways.
    let mut w = plugin.worker(0);
    assert_eq!(w.clean(&data[..256]).unwrap(), native_clean(&cfg, &reference, &data[..256]), "plugin and native disagree");

    let nreps: usize = arg(&args, "--reps").unwrap_or(15);
    let rust_size = std::fs::metadata(&path).unwrap().len();
    println!("kiln plugin cost: cleaner-basic ({rust_size} bytes), {records} records, best of {nreps}, the two sides alternating");
    println!("{:>6}  {:>14}  {:>14}  {:>7}", "batch", "plugin ns/rec", "native ns/rec", "ratio");
    let only_batch: Option<usize> = arg(&args, "--batch");
    let batches: Vec<usize> = [1usize, 64, 1024].into_iter().filter(|b| only_batch.is_none_or(|o| o == *b)).collect();
    let mut rust_ns = Vec::new();
    for &batch in &batches {
        // The two sides alternate, one repetition each, and each keeps its best: a busy spell
        // on the machine slows both alike instead of one side's whole series.
        let (mut p, mut n) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..nreps {
            if only.as_deref() != Some("native") {
                p = p.min(per_record(&mut w, &data, &[batch], 1)[0]);
            }
            if only.as_deref() != Some("plugin") {
                let t = best_of(1, || data.chunks(batch).map(|c| native_clean(&cfg, &reference, c).len()).sum());
                n = n.min(t.as_nanos() as f64 / records as f64);
            }
        }
        rust_ns.push(p);
        println!("{batch:>6}  {p:>14.0}  {n:>14.0}  {:>6.2}x", p / n);
    }

    let (warm_load, fresh) = instantiation(&rt, &spec, &plugin, 10);
    println!("compile + cache (first load): {:>8.2} ms", cold.as_secs_f64() * 1e3);
    println!("load from precompiled cache:  {:>8.2} ms", warm_load.as_secs_f64() * 1e3);
    println!("fresh instance (configured):  {:>8.3} ms", fresh.as_secs_f64() * 1e3);
    if args.iter().any(|a| a == "--rust-only") {
        return;
    }

    // The Python and JavaScript cleaners against the Rust component.
    let pilot_secs: f64 = arg(&args, "--pilot-secs").unwrap_or(130.0);
    let rust_out = w.clean(&data[..256]).unwrap();
    println!();
    println!("Python and JavaScript cleaners (ports of cleaner-basic) vs the Rust component (its figures from above), {records} records, best of 3");
    println!("{:<11} {:>9} {:>11} {:>11} {:>10} {:>18} {:>18} {:>18}", "plugin", "size MB", "first load", "cache load", "instance", "ns/rec b=1 (x)", "ns/rec b=64 (x)", "ns/rec b=1024 (x)");
    println!("{:<11} {:>9.2} {:>9.0}ms {:>9.2}ms {:>8.3}ms {:>18.0} {:>18.0} {:>18.0}", "rust", rust_size as f64 / 1e6, cold.as_secs_f64() * 1e3, warm_load.as_secs_f64() * 1e3, fresh.as_secs_f64() * 1e3, rust_ns[0], rust_ns[1], rust_ns[2]);
    for (name, folder) in [("cleaner-py", "python/cleaner-py"), ("cleaner-js", "js/cleaner-js")] {
        let built = kiln::plugin::source::build_plugin(&root().join("plugins").join(folder), &root().join("plugins/dist"))
            .unwrap_or_else(|e| panic!("building {folder}: {e}"));
        let mut gspec = PluginSpec::new(&built.path);
        gspec.config = config.clone();
        let t = Instant::now();
        let gplugin = rt.load(&gspec).unwrap();
        let gcold = t.elapsed();
        let mut gw = gplugin.worker(0);
        // The same decisions and texts as the Rust cleaner (its notes carry its own name).
        let rename = |o: &CleanOutcome| serde_json::to_string(o).unwrap().replace(name, "cleaner-basic");
        let ours: Vec<String> = gw.clean(&data[..256]).unwrap().iter().map(rename).collect();
        let theirs: Vec<String> = rust_out.iter().map(rename).collect();
        assert_eq!(ours, theirs, "{name} and cleaner-basic disagree");
        let (gwarm, gfresh) = instantiation(&rt, &gspec, &gplugin, 5);
        let ns = per_record(&mut gw, &data, &batches, 3);
        let cell = |i: usize| format!("{:.0} ({:.0}x)", ns[i], ns[i] / rust_ns[i]);
        println!(
            "{name:<11} {:>9.2} {:>9.0}ms {:>9.2}ms {:>8.3}ms {:>18} {:>18} {:>18}",
            std::fs::metadata(&built.path).unwrap().len() as f64 / 1e6,
            gcold.as_secs_f64() * 1e3,
            gwarm.as_secs_f64() * 1e3,
            gfresh.as_secs_f64() * 1e3,
            cell(0),
            cell(1),
            cell(2)
        );
        if name == "cleaner-py" {
            // A 50-sample pilot loads the cleaner from the cache once, makes one instance and
            // cleans its samples in one batch (plugin_batch_size 512).
            let pilot_batch = &data[..50];
            let clean50 = best_of(3, || gw.clean(pilot_batch).unwrap().len());
            let added = gwarm + gfresh + clean50;
            println!(
                "  in a 50-sample pilot: load {:.1} ms + instance {:.1} ms + cleaning {:.1} ms = {:.1} ms, {:.3} % of a {pilot_secs:.0} s pilot",
                gwarm.as_secs_f64() * 1e3,
                gfresh.as_secs_f64() * 1e3,
                clean50.as_secs_f64() * 1e3,
                added.as_secs_f64() * 1e3,
                added.as_secs_f64() / pilot_secs * 100.0
            );
        }
    }
}
