//! A cleaner's `list<outcome>` read out of the guest's memory in one pass, straight into kiln's
//! [`CleanReply`], instead of through the generated `Outcome` (which wasmtime builds field by
//! field, each list and option on its own) and a conversion afterwards.
//!
//! The type is checked by wasmtime against the generated `list<outcome>` when the function is
//! looked up; the offsets below come from the canonical ABI of those same generated types, and
//! every pointer, length, case number and text is checked as wasmtime's own lifting checks it,
//! with the same hostcall budget for the bytes copied out.

use wasmtime::component::__internal::wasmtime_environ::component::StringEncoding;
use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext};
use wasmtime::component::{ComponentType, Lift};

use super::bindings::cleaner::exports::kiln::stages::cleaning::Outcome;
use super::bindings::wit::Entry;
use super::lower::offsets;
use super::types::CleanReply;

/// A cleaner's replies, lifted from `list<outcome>`.
pub(crate) struct CleanReplies(pub(crate) Vec<CleanReply>);

// SAFETY: the type, ABI and type check of `list<outcome>` as generated from `wit/`.
unsafe impl ComponentType for CleanReplies {
    type Lower = <Vec<Outcome> as ComponentType>::Lower;
    const ABI: CanonicalAbiInfo = <Vec<Outcome> as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <Vec<Outcome> as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: reads exactly what the generic lifting of `Vec<Outcome>` reads, with the same checks.
unsafe impl Lift for CleanReplies {
    fn linear_lift_from_flat(cx: &mut LiftContext<'_>, ty: InterfaceType, src: &Self::Lower) -> wasmtime::Result<Self> {
        if cx.options().string_encoding != StringEncoding::Utf8 {
            return Ok(CleanReplies(Vec::<Outcome>::linear_lift_from_flat(cx, ty, src)?.into_iter().map(Into::into).collect()));
        }
        // A list lowers to two i32 values; wasmtime leaves the upper bits undefined.
        let [ptr, len] = src;
        read(cx, ptr.get_u32() as usize, len.get_u32() as usize)
    }

    fn linear_lift_from_memory(cx: &mut LiftContext<'_>, ty: InterfaceType, bytes: &[u8]) -> wasmtime::Result<Self> {
        if cx.options().string_encoding != StringEncoding::Utf8 {
            return Ok(CleanReplies(Vec::<Outcome>::linear_lift_from_memory(cx, ty, bytes)?.into_iter().map(Into::into).collect()));
        }
        read(cx, word(bytes, 0), word(bytes, 4))
    }
}

/// Field offsets (canonical ABI, 32-bit memory) of the records and variants read here.
struct Layout {
    /// `outcome`'s payload (after its case byte).
    payload: usize,
    /// `edit`: instruction, response (each an option: case byte, then the text at `some`), notes.
    edit: [usize; 3],
    some: usize,
    /// `drop`: code, detail; `entry`: key, value.
    pair: [usize; 2],
}

impl Layout {
    fn new() -> Layout {
        let text = <String as ComponentType>::ABI;
        // The case byte, then the payload at the alignment of the largest case (the variant's).
        let align = Outcome::ALIGN32 as usize;
        Layout {
            payload: 1usize.div_ceil(align) * align,
            edit: offsets([<Option<String> as ComponentType>::ABI, <Option<String> as ComponentType>::ABI, <Vec<Entry> as ComponentType>::ABI]),
            some: offsets([<u8 as ComponentType>::ABI, text.clone()])[1],
            pair: offsets([text.clone(), text]),
        }
    }
}

fn word(bytes: &[u8], at: usize) -> usize {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes")) as usize
}

/// The bytes of a list of `count` elements of `size` bytes aligned to `align` at `ptr`,
/// checked and charged as wasmtime's lifting checks and charges them.
fn list_bytes<'m>(cx: &mut LiftContext<'m>, ptr: usize, count: usize, size: usize, align: u32) -> wasmtime::Result<&'m [u8]> {
    if ptr % align as usize != 0 {
        wasmtime::bail!("list pointer is not aligned");
    }
    let memory = cx.memory();
    let bytes = count.checked_mul(size).and_then(|n| memory.get(ptr..ptr.checked_add(n)?)).ok_or_else(|| wasmtime::format_err!("list pointer/length out of bounds of memory"))?;
    cx.consume_fuel(bytes.len())?;
    Ok(bytes)
}

/// The text whose (pointer, length) is at `at` in `bytes`.
fn text(cx: &mut LiftContext<'_>, bytes: &[u8], at: usize) -> wasmtime::Result<String> {
    let (ptr, len) = (word(bytes, at), word(bytes, at + 4));
    let raw = ptr.checked_add(len).and_then(|end| cx.memory().get(ptr..end)).ok_or_else(|| wasmtime::format_err!("string pointer/length out of bounds of memory"))?;
    cx.consume_fuel(len)?;
    Ok(std::str::from_utf8(raw)?.to_owned())
}

/// An `option<string>` at `at` in `bytes`.
fn optional_text(cx: &mut LiftContext<'_>, bytes: &[u8], at: usize, layout: &Layout) -> wasmtime::Result<Option<String>> {
    match bytes[at] {
        0 => Ok(None),
        1 => Ok(Some(text(cx, bytes, at + layout.some)?)),
        n => wasmtime::bail!("invalid option discriminant {n}"),
    }
}

fn read(cx: &mut LiftContext<'_>, ptr: usize, len: usize) -> wasmtime::Result<CleanReplies> {
    let layout = Layout::new();
    let size = Outcome::SIZE32;
    let list = list_bytes(cx, ptr, len, size, Outcome::ALIGN32)?;
    let mut replies = Vec::with_capacity(len);
    for item in list.chunks_exact(size) {
        let payload = &item[layout.payload..];
        replies.push(match item[0] {
            0 => {
                let e = &layout.edit;
                let instruction = optional_text(cx, payload, e[0], &layout)?;
                let response = optional_text(cx, payload, e[1], &layout)?;
                let entries = list_bytes(cx, word(payload, e[2]), word(payload, e[2] + 4), Entry::SIZE32, Entry::ALIGN32)?;
                let notes = entries.chunks_exact(Entry::SIZE32).map(|n| Ok((text(cx, n, layout.pair[0])?, text(cx, n, layout.pair[1])?))).collect::<wasmtime::Result<_>>()?;
                CleanReply::Keep { instruction, response, notes }
            }
            1 => CleanReply::Dropped { code: text(cx, payload, layout.pair[0])?, detail: text(cx, payload, layout.pair[1])? },
            n => wasmtime::bail!("invalid variant discriminant {n}"),
        });
    }
    Ok(CleanReplies(replies))
}
