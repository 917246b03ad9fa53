//! A call-scoped arena in front of a general allocator, for kiln's components.
//!
//! A component call allocates in bursts that all end together: the host asks the component's
//! `cabi_realloc` for one block per text of the batch, the call makes its working memory and its
//! results, and the host's post-return call frees the results. [`Arena`] serves such blocks by
//! bumping a pointer through one chunk and counts the live ones; when the count falls to zero
//! (every block of the call is freed) the chunk is reused from its start. A freed block at the
//! top of the chunk is taken back at once (last in, first out), and a top block grows in place.
//!
//! What would pin the chunk - a value that outlives the call, such as a plugin's configuration -
//! is allocated in [`Arena::persistent`], which sends it to the general allocator behind the
//! arena. A block that outlives a call without that only keeps the chunk from being reused:
//! allocations go on in the general allocator, nothing is lost or overwritten. A call that needs
//! more than the chunk holds is served by the general allocator for the rest, and the next chunk
//! is sized for it (up to a maximum).
//!
//! For single-threaded components (wasm32 without threads); a spin lock keeps it sound
//! elsewhere (the tests run it natively).

#![no_std]

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

/// The first chunk's size (1 MiB).
pub const DEFAULT_FIRST: usize = 1 << 20;
/// The largest chunk (32 MiB): a call that needs more is served by the general allocator.
pub const DEFAULT_MAX: usize = 32 << 20;
/// Below this a chunk is not worth taking; if even this much cannot be had, the arena stays off.
const MIN_CHUNK: usize = 64 << 10;
const CHUNK_ALIGN: usize = 16;

/// The arena and the general allocator `A` behind it.
pub struct Arena<A> {
    fallback: A,
    lock: AtomicBool,
    state: UnsafeCell<State>,
}

// SAFETY: every access to `state` holds `lock`; `A` is shared as the caller's `A: Sync` allows.
unsafe impl<A: Sync> Sync for Arena<A> {}

struct State {
    /// The chunk: `base..end` (0..0 when there is none); `next` is where the next block goes.
    base: usize,
    end: usize,
    next: usize,
    /// Blocks of the chunk not yet freed.
    live: usize,
    /// Bytes asked for since the chunk was last reused (arena and general allocator alike).
    asked: usize,
    /// A block did not fit since the chunk was last reused.
    overflowed: bool,
    /// The size of the next chunk to take.
    want: usize,
    max: usize,
    /// Depth of [`Arena::persistent`] scopes.
    persistent: u32,
    /// Not even `MIN_CHUNK` could be had: the arena is off for good.
    off: bool,
}

/// What the arena holds now (for tests and diagnostics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// The chunk's size in bytes (0: no chunk).
    pub capacity: usize,
    /// Bytes from the chunk's start to its next free byte.
    pub used: usize,
    /// Blocks of the chunk not yet freed.
    pub live: usize,
}

impl<A> Arena<A> {
    /// An arena with a 1 MiB first chunk growing up to 32 MiB, in front of `fallback`.
    pub const fn new(fallback: A) -> Self {
        Self::with_sizes(fallback, DEFAULT_FIRST, DEFAULT_MAX)
    }

    /// An arena whose first chunk holds `first` bytes and whose chunks grow up to `max`.
    pub const fn with_sizes(fallback: A, first: usize, max: usize) -> Self {
        let max = if max < MIN_CHUNK { MIN_CHUNK } else { max };
        let first = if first < MIN_CHUNK { MIN_CHUNK } else if first > max { max } else { first };
        Arena {
            fallback,
            lock: AtomicBool::new(false),
            state: UnsafeCell::new(State {
                base: 0,
                end: 0,
                next: 0,
                live: 0,
                asked: 0,
                overflowed: false,
                want: first,
                max,
                persistent: 0,
                off: false,
            }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State, &A) -> R) -> R {
        while self.lock.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            core::hint::spin_loop();
        }
        // SAFETY: the lock is held, so this is the only reference to the state.
        let out = f(unsafe { &mut *self.state.get() }, &self.fallback);
        self.lock.store(false, Ordering::Release);
        out
    }

    /// Run `f` with every allocation it makes sent to the general allocator: for values that
    /// outlive the call, such as a plugin's configuration.
    pub fn persistent<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Scope<'a, A>(&'a Arena<A>);
        impl<A> Drop for Scope<'_, A> {
            fn drop(&mut self) {
                self.0.with(|s, _| s.persistent -= 1);
            }
        }
        self.with(|s, _| s.persistent += 1);
        let _scope = Scope(self);
        f()
    }

    /// The general allocator behind the arena.
    pub fn fallback(&self) -> &A {
        &self.fallback
    }

    /// The chunk's size, use and live blocks.
    pub fn stats(&self) -> Stats {
        self.with(|s, _| Stats { capacity: s.end - s.base, used: s.next - s.base, live: s.live })
    }
}

impl State {
    fn contains(&self, addr: usize) -> bool {
        self.base != 0 && addr >= self.base && addr < self.end
    }

    /// A block from the chunk, if it fits.
    fn bump(&mut self, layout: Layout) -> Option<*mut u8> {
        if self.base == 0 || layout.size() == 0 {
            return None;
        }
        let start = self.next.checked_add(layout.align() - 1)? & !(layout.align() - 1);
        let end = start.checked_add(layout.size())?;
        if end > self.end {
            return None;
        }
        self.next = end;
        self.live += 1;
        Some(start as *mut u8)
    }

    fn take_chunk<A: GlobalAlloc>(&mut self, fallback: &A) {
        while self.want >= MIN_CHUNK {
            let Ok(layout) = Layout::from_size_align(self.want, CHUNK_ALIGN) else { break };
            // SAFETY: `layout` has a non-zero size.
            let p = unsafe { fallback.alloc(layout) };
            if !p.is_null() {
                self.base = p as usize;
                self.end = self.base + self.want;
                self.next = self.base;
                return;
            }
            self.want /= 2;
        }
        self.off = true;
    }

    /// Every block is freed: start the chunk over, first swapping it for a larger one if the
    /// last round did not fit.
    fn reuse<A: GlobalAlloc>(&mut self, fallback: &A) {
        self.next = self.base;
        let capacity = self.end - self.base;
        if self.overflowed && capacity < self.max {
            let grown = self.asked.checked_next_power_of_two().unwrap_or(self.max).clamp(capacity, self.max);
            if grown > capacity {
                // SAFETY: the chunk came from `fallback` with this layout and no block of it is live.
                unsafe { fallback.dealloc(self.base as *mut u8, Layout::from_size_align_unchecked(capacity, CHUNK_ALIGN)) };
                self.base = 0;
                self.end = 0;
                self.next = 0;
                self.want = grown;
            }
        }
        self.overflowed = false;
        self.asked = 0;
    }
}

// SAFETY: a block comes either from the chunk - `bump` hands out each byte of it to one live block
// at a time, and the chunk is reused or freed only when no block of it is live - or from
// `fallback`, to which it is returned; `contains` tells the two apart because the chunk is one
// allocation of `fallback`, disjoint from its other live blocks.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Arena<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let from_chunk = self.with(|s, fallback| {
            if s.persistent > 0 {
                return None;
            }
            s.asked = s.asked.saturating_add(layout.size().saturating_add(layout.align()));
            if s.base == 0 && s.live == 0 && !s.off {
                s.take_chunk(fallback);
            }
            let p = s.bump(layout);
            if p.is_none() && s.base != 0 {
                s.overflowed = true;
            }
            p
        });
        // SAFETY: the caller's layout, passed on.
        from_chunk.unwrap_or_else(|| unsafe { self.fallback.alloc(layout) })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let ours = self.with(|s, fallback| {
            let addr = ptr as usize;
            if !s.contains(addr) {
                return false;
            }
            s.live -= 1;
            if addr + layout.size() == s.next {
                s.next = addr;
            }
            if s.live == 0 {
                s.reuse(fallback);
            }
            true
        });
        if !ours {
            // SAFETY: not from the chunk, so from `fallback` with this layout.
            unsafe { self.fallback.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        enum Plan {
            Done,
            Move,
            Fallback,
        }
        let plan = self.with(|s, _| {
            let addr = ptr as usize;
            if !s.contains(addr) {
                return Plan::Fallback;
            }
            if addr + layout.size() == s.next {
                // The top block grows or shrinks where it is, if the chunk holds it.
                if let Some(end) = addr.checked_add(new_size).filter(|&e| e <= s.end) {
                    s.asked = s.asked.saturating_add(new_size.saturating_sub(layout.size()));
                    s.next = end;
                    return Plan::Done;
                }
            } else if new_size <= layout.size() {
                // Shrinks where it is; the tail stays unused until the chunk is reused.
                return Plan::Done;
            }
            Plan::Move
        });
        match plan {
            Plan::Done => ptr,
            // SAFETY: not from the chunk, so from `fallback` with this layout.
            Plan::Fallback => unsafe { self.fallback.realloc(ptr, layout, new_size) },
            Plan::Move => {
                // SAFETY: the caller guarantees `new_size`, rounded up to the alignment, fits an
                // isize, so this is a valid layout; the old block holds `layout.size()` bytes.
                unsafe {
                    let grown = Layout::from_size_align_unchecked(new_size, layout.align());
                    let p = self.alloc(grown);
                    if !p.is_null() {
                        core::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    p
                }
            }
        }
    }
}
