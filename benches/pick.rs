//! Router pick: the cost of choosing a worker and reserving its slot.
//! `cargo bench --bench pick`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use vllm_gateway::config::Config;
use vllm_gateway::pool::{WorkerPool, WorkerRegistry};

fn pool(workers: usize, routing: &str) -> WorkerPool {
    let list: Vec<String> = (0..workers)
        .map(|i| format!("\"http://127.0.0.1:{}\"", 20000 + i))
        .collect();
    let text = format!(
        "[[models]]\nname = \"m\"\nworkers = [{}]\nrouting = \"{routing}\"\n",
        list.join(",")
    );
    let model = Config::parse(&text).unwrap().models.remove(0);
    WorkerPool::new(&model, &WorkerRegistry::default())
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for workers in [4usize, 16, 64] {
        for routing in ["least_loaded", "prefix_affinity"] {
            let p = pool(workers, routing);
            // Some load already in flight, and some reported by the workers.
            let held: Vec<_> = (0..workers * 3)
                .map(|_| p.pick(&[], Some(7)).unwrap())
                .collect();
            for (i, m) in p.members.iter().enumerate() {
                m.worker.record_load(
                    m.worker.load_mark(),
                    i as u32 % 5,
                    i as u32 % 3,
                    0.1 * (i % 10) as f64,
                );
            }
            let mut key = 0u64;
            group.bench_with_input(BenchmarkId::new(routing, workers), &workers, |b, _| {
                b.iter(|| {
                    key = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let r = p.pick(&[], Some(black_box(key % 8)));
                    black_box(r)
                })
            });
            drop(held);
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
