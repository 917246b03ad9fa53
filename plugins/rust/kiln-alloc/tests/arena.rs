//! The arena natively, in front of the system allocator (through a wrapper that counts what
//! reaches it and can refuse large blocks).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

use kiln_alloc::{Arena, Stats};

/// The system allocator, counting its live blocks; refuses blocks larger than `refuse_above`.
struct Counting {
    live: AtomicIsize,
    refuse_above: AtomicUsize,
}

impl Counting {
    const fn new() -> Self {
        Counting { live: AtomicIsize::new(0), refuse_above: AtomicUsize::new(usize::MAX) }
    }
    fn live(&self) -> isize {
        self.live.load(Ordering::SeqCst)
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > self.refuse_above.load(Ordering::SeqCst) {
            return std::ptr::null_mut();
        }
        self.live.fetch_add(1, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.live.fetch_sub(1, Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn arena(first: usize, max: usize) -> Arena<Counting> {
    Arena::with_sizes(Counting::new(), first, max)
}

struct Block {
    ptr: *mut u8,
    layout: Layout,
    fill: u8,
}

fn alloc(a: &Arena<Counting>, size: usize, align: usize, fill: u8) -> Block {
    let layout = Layout::from_size_align(size, align).unwrap();
    let ptr = unsafe { a.alloc(layout) };
    assert!(!ptr.is_null(), "allocation of {size} bytes failed");
    assert_eq!(ptr as usize % align, 0, "block of {size} bytes not aligned to {align}");
    unsafe { ptr.write_bytes(fill, size) };
    Block { ptr, layout, fill }
}

fn check(b: &Block) {
    let bytes = unsafe { std::slice::from_raw_parts(b.ptr, b.layout.size()) };
    assert!(bytes.iter().all(|&x| x == b.fill), "block at {:p} ({} bytes) was overwritten", b.ptr, b.layout.size());
}

fn free(a: &Arena<Counting>, b: Block) {
    check(&b);
    unsafe { a.dealloc(b.ptr, b.layout) };
}

fn in_chunk(a: &Arena<Counting>, b: &Block, base: usize) -> bool {
    let s = a.stats();
    (b.ptr as usize) >= base && (b.ptr as usize) < base + s.capacity
}

#[test]
fn blocks_come_from_one_chunk_which_is_reused_once_all_are_freed() {
    let a = arena(1 << 20, 1 << 20);
    assert_eq!(a.stats(), Stats { capacity: 0, used: 0, live: 0 }, "no chunk before the first block");
    let blocks: Vec<Block> = (0..10).map(|i| alloc(&a, 100 + i, 8, i as u8)).collect();
    let base = blocks[0].ptr as usize;
    let s = a.stats();
    assert_eq!((s.capacity, s.live), (1 << 20, 10));
    assert!(blocks.iter().all(|b| in_chunk(&a, b, base)));
    // Consecutive, without gaps beyond alignment.
    assert!(s.used >= 10 * 100 && s.used < 10 * 100 + 10 * 8 + 45, "used {}", s.used);
    for b in blocks {
        free(&a, b);
    }
    assert_eq!(a.stats(), Stats { capacity: 1 << 20, used: 0, live: 0 });
    let again = alloc(&a, 64, 8, 7);
    assert_eq!(again.ptr as usize, base, "the chunk starts over");
    free(&a, again);
}

#[test]
fn the_top_block_is_taken_back_and_grows_in_place() {
    let a = arena(1 << 20, 1 << 20);
    let x = alloc(&a, 40, 8, 1);
    let y = alloc(&a, 40, 8, 2);
    let used = a.stats().used;
    free(&a, y);
    assert_eq!(a.stats().used, used - 40, "the freed top block is taken back");
    let grown = unsafe { a.realloc(x.ptr, x.layout, 4000) };
    assert_eq!(grown, x.ptr, "the top block grows where it is");
    let x = Block { ptr: grown, layout: Layout::from_size_align(4000, 8).unwrap(), fill: 1 };
    assert!(unsafe { std::slice::from_raw_parts(x.ptr, 40) }.iter().all(|&b| b == 1), "contents kept");
    unsafe { x.ptr.write_bytes(1, 4000) };
    let shrunk = unsafe { a.realloc(x.ptr, x.layout, 10) };
    assert_eq!(shrunk, x.ptr);
    assert_eq!(a.stats().used, 10);
    free(&a, Block { ptr: shrunk, layout: Layout::from_size_align(10, 8).unwrap(), fill: 1 });
    assert_eq!(a.stats().live, 0);
}

#[test]
fn a_block_below_the_top_moves_when_it_grows_and_keeps_its_contents() {
    let a = arena(1 << 20, 1 << 20);
    let x = alloc(&a, 100, 4, 9);
    let y = alloc(&a, 100, 4, 8);
    let moved = unsafe { a.realloc(x.ptr, x.layout, 300) };
    assert_ne!(moved, x.ptr);
    assert!(unsafe { std::slice::from_raw_parts(moved, 100) }.iter().all(|&b| b == 9));
    assert_eq!(a.stats().live, 2, "the old block is freed, the new one counted");
    unsafe { moved.write_bytes(9, 300) };
    // Shrinking below the top stays in place.
    let same = unsafe { a.realloc(y.ptr, y.layout, 50) };
    assert_eq!(same, y.ptr);
    free(&a, Block { ptr: same, layout: Layout::from_size_align(50, 4).unwrap(), fill: 8 });
    free(&a, Block { ptr: moved, layout: Layout::from_size_align(300, 4).unwrap(), fill: 9 });
    assert_eq!(a.stats(), Stats { capacity: 1 << 20, used: 0, live: 0 });
}

#[test]
fn persistent_blocks_go_to_the_general_allocator() {
    static A: Arena<Counting> = Arena::with_sizes(Counting::new(), 1 << 16, 1 << 16);
    let call = alloc(&A, 32, 8, 1);
    let kept: Vec<Block> = A.persistent(|| (0..5).map(|i| alloc(&A, 64, 8, 10 + i)).collect());
    let s = A.stats();
    assert_eq!(s.live, 1, "the persistent blocks are not in the chunk");
    assert_eq!(A.fallback().live(), 1 + 5, "the chunk and the five persistent blocks");
    let base = call.ptr as usize;
    assert!(kept.iter().all(|b| !in_chunk(&A, b, base)));
    free(&A, call);
    assert_eq!(A.stats().used, 0, "the call's block freed: the chunk is reused despite the kept ones");
    // Nested scopes and a panic inside one leave the arena as it was.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| A.persistent(|| A.persistent(|| panic!("inside")))));
    assert!(r.is_err());
    let after = alloc(&A, 16, 8, 3);
    assert!(in_chunk(&A, &after, base), "after the scopes, blocks come from the chunk again");
    free(&A, after);
    for b in kept {
        free(&A, b);
    }
    assert_eq!(A.fallback().live(), 1, "only the chunk is left");
}

#[test]
fn a_call_larger_than_the_chunk_spills_over_and_the_next_chunk_is_sized_for_it() {
    let a = arena(64 << 10, 1 << 20);
    let blocks: Vec<Block> = (0..50).map(|i| alloc(&a, 4096, 16, i as u8)).collect();
    let s = a.stats();
    assert_eq!(s.capacity, 64 << 10);
    assert!(s.live < 50 && s.live >= 15, "{} blocks in the chunk", s.live);
    for b in blocks {
        free(&a, b);
    }
    // The chunk is swapped when the last chunk block is freed; the next block takes the new one.
    let b = alloc(&a, 8, 8, 1);
    assert_eq!(a.stats().capacity, 256 << 10, "50 blocks of about 4 KiB: the next power of two");
    free(&a, b);
    let blocks: Vec<Block> = (0..50).map(|i| alloc(&a, 4096, 16, i as u8)).collect();
    assert_eq!(a.stats().live, 50, "all fit now");
    for b in blocks {
        free(&a, b);
    }
    // Never above the maximum.
    let blocks: Vec<Block> = (0..600).map(|i| alloc(&a, 4096, 16, i as u8)).collect();
    for b in blocks {
        free(&a, b);
    }
    let b = alloc(&a, 8, 8, 1);
    assert_eq!(a.stats().capacity, 1 << 20);
    free(&a, b);
}

#[test]
fn a_general_allocator_that_refuses_large_blocks_gets_a_smaller_chunk_or_none() {
    let small = Counting::new();
    small.refuse_above.store(200 << 10, Ordering::SeqCst);
    let a = Arena::with_sizes(small, 1 << 20, 1 << 20);
    let b = alloc(&a, 100, 8, 1);
    assert_eq!(a.stats().capacity, 128 << 10, "1 MiB, 512 KiB and 256 KiB refused");
    free(&a, b);

    let none = Counting::new();
    none.refuse_above.store(1000, Ordering::SeqCst);
    let a = Arena::with_sizes(none, 1 << 20, 1 << 20);
    let blocks: Vec<Block> = (0..20).map(|i| alloc(&a, 500, 8, i)).collect();
    assert_eq!(a.stats(), Stats { capacity: 0, used: 0, live: 0 }, "no chunk: every block from the general allocator");
    for b in blocks {
        free(&a, b);
    }
    assert_eq!(a.fallback().live(), 0);
}

/// Random allocations, frees and reallocations of many sizes and alignments, every block filled
/// with its own byte and checked before it is freed or moved, and all of them checked now and
/// then: no block may overlap another, across chunk reuse, growth and spill-over.
#[test]
fn random_traffic_never_overlaps_or_loses_a_byte() {
    let a = arena(64 << 10, 512 << 10);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut live: HashMap<u64, Block> = HashMap::new();
    let mut id = 0u64;
    let mut reused = 0;
    for step in 0..40_000 {
        let r = next();
        match r % 10 {
            0..=4 => {
                let size = 1 + (next() % if r % 7 == 0 { 20_000 } else { 300 }) as usize;
                let align = 1 << (next() % 7);
                id += 1;
                live.insert(id, alloc(&a, size, align, (id % 251) as u8 + 1));
            }
            5..=7 if !live.is_empty() => {
                let k = *live.keys().nth((next() % live.len() as u64) as usize).unwrap();
                free(&a, live.remove(&k).unwrap());
            }
            8 if !live.is_empty() => {
                let k = *live.keys().nth((next() % live.len() as u64) as usize).unwrap();
                let b = live.remove(&k).unwrap();
                check(&b);
                let size = 1 + (next() % 3000) as usize;
                let p = unsafe { a.realloc(b.ptr, b.layout, size) };
                assert!(!p.is_null());
                let kept = size.min(b.layout.size());
                assert!(unsafe { std::slice::from_raw_parts(p, kept) }.iter().all(|&x| x == b.fill), "realloc lost bytes");
                unsafe { p.write_bytes(b.fill, size) };
                live.insert(k, Block { ptr: p, layout: Layout::from_size_align(size, b.layout.align()).unwrap(), fill: b.fill });
            }
            _ => {
                // The end of a call: everything freed.
                if step % 3 == 0 {
                    for (_, b) in live.drain() {
                        free(&a, b);
                    }
                    assert_eq!(a.stats().live, 0);
                    assert_eq!(a.stats().used, 0);
                    reused += 1;
                }
            }
        }
        if step % 1000 == 0 {
            live.values().for_each(check);
        }
    }
    for (_, b) in live.drain() {
        free(&a, b);
    }
    assert!(reused > 100, "the chunk was reused {reused} times");
}
