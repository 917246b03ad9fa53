//! kiln's own [`Sample`] lowered into a guest by reference: the WIT `sample` record made of
//! borrowed fields, so that a call copies each text once, straight into the guest's memory,
//! instead of first cloning every sample into a generated `wit::Sample`.
//!
//! The field names and order are those of `record sample` (and its parts) in `wit/`; wasmtime
//! checks them against the component's function type when the function is looked up, so a
//! mismatch is an error at the first call, never a silent misreading.

use std::mem::MaybeUninit;

use wasmtime::component::__internal::wasmtime_environ::component::StringEncoding;
use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LowerContext};
use wasmtime::component::{ComponentType, Lower};
use wasmtime::ValRaw;

use super::bindings::wit;
use super::types::{Generation, Sample, Verdict};

/// `record generation`, borrowed.
#[derive(ComponentType, Lower, Clone, Copy)]
#[component(record)]
pub(crate) struct GenerationRef<'a> {
    #[component(name = "finish-reason")]
    finish_reason: wit::FinishReason,
    #[component(name = "stop-sequence")]
    stop_sequence: Option<&'a str>,
    #[component(name = "prompt-tokens")]
    prompt_tokens: u32,
    #[component(name = "completion-tokens")]
    completion_tokens: u32,
    #[component(name = "max-tokens")]
    max_tokens: u32,
}

/// `record verdict`, borrowed.
#[derive(ComponentType, Lower)]
#[component(record)]
pub(crate) struct VerdictRef<'a> {
    critic: &'a str,
    aspect: &'a str,
    pass: bool,
    margin: f64,
    reason: &'a str,
}

/// `record entry`, borrowed.
#[derive(ComponentType, Lower)]
#[component(record)]
pub(crate) struct EntryRef<'a> {
    key: &'a str,
    value: &'a str,
}

/// `record sample`, borrowed from a [`Sample`].
#[derive(ComponentType, Lower)]
#[component(record)]
pub(crate) struct SampleRef<'a> {
    id: &'a str,
    #[component(name = "instruction-type")]
    instruction_type: &'a str,
    instruction: &'a str,
    response: &'a str,
    #[component(name = "instruction-generation")]
    instruction_generation: GenerationRef<'a>,
    #[component(name = "response-generation")]
    response_generation: GenerationRef<'a>,
    verdicts: List<VerdictRef<'a>>,
    metadata: List<EntryRef<'a>>,
}

/// A `list<T>` that, when empty, is lowered without calling the guest's allocator.
///
/// wasmtime asks the guest's `cabi_realloc` for every list, empty ones included: one call into
/// the guest each, and most samples carry no verdicts and no metadata. A list of no elements
/// owns no memory, so its pointer only has to be aligned and in bounds; the element alignment
/// is both (the canonical ABI's own choice for zero-sized allocations).
pub(crate) struct List<T>(Vec<T>);

// SAFETY: the same type, ABI and type check as `[T]`, whose implementation is used for every
// non-empty list.
unsafe impl<T: ComponentType> ComponentType for List<T> {
    type Lower = <[T] as ComponentType>::Lower;
    const ABI: CanonicalAbiInfo = <[T] as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <[T] as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: an empty list is written as the pointer pair (alignment, 0), as `[T]` would write it
// after a zero-byte allocation; anything else is `[T]`'s lowering.
unsafe impl<T: Lower> Lower for List<T> {
    fn linear_lower_to_flat<U>(&self, cx: &mut LowerContext<'_, U>, ty: InterfaceType, dst: &mut MaybeUninit<Self::Lower>) -> wasmtime::Result<()> {
        if !self.0.is_empty() {
            return self.0.as_slice().linear_lower_to_flat(cx, ty, dst);
        }
        dst.write([ValRaw::i64(i64::from(T::ALIGN32)), ValRaw::i64(0)]);
        Ok(())
    }

    fn linear_lower_to_memory<U>(&self, cx: &mut LowerContext<'_, U>, ty: InterfaceType, offset: usize) -> wasmtime::Result<()> {
        if !self.0.is_empty() {
            return self.0.as_slice().linear_lower_to_memory(cx, ty, offset);
        }
        *cx.get::<4>(offset) = T::ALIGN32.to_le_bytes();
        *cx.get::<4>(offset + 4) = 0u32.to_le_bytes();
        Ok(())
    }
}

impl<'a> From<&'a Generation> for GenerationRef<'a> {
    fn from(g: &'a Generation) -> Self {
        GenerationRef {
            finish_reason: g.finish_reason.into(),
            stop_sequence: g.stop_sequence.as_deref(),
            prompt_tokens: g.prompt_tokens,
            completion_tokens: g.completion_tokens,
            max_tokens: g.max_tokens,
        }
    }
}

impl<'a> From<&'a Verdict> for VerdictRef<'a> {
    fn from(v: &'a Verdict) -> Self {
        VerdictRef { critic: &v.critic, aspect: &v.aspect, pass: v.pass, margin: v.margin, reason: &v.reason }
    }
}

impl<'a> From<&'a Sample> for SampleRef<'a> {
    fn from(s: &'a Sample) -> Self {
        SampleRef {
            id: &s.id,
            instruction_type: &s.instruction_type,
            instruction: &s.instruction,
            response: &s.response,
            instruction_generation: (&s.instruction_generation).into(),
            response_generation: (&s.response_generation).into(),
            // Empty vectors do not allocate: a sample without verdicts or metadata costs nothing here.
            verdicts: List(s.verdicts.iter().map(Into::into).collect()),
            metadata: List(s.metadata.iter().map(|(key, value)| EntryRef { key, value }).collect()),
        }
    }
}

/// A batch of samples, to be lowered by reference.
pub(crate) fn sample_list(samples: &[Sample]) -> SampleList<'_> {
    SampleList(samples)
}

/// A batch of samples as the WIT `list<sample>`, lowered in two passes when the guest takes
/// UTF-8 strings (as components built by wit-bindgen do):
/// first every allocation in the guest (one per non-empty text, plus the lists of verdicts and
/// metadata where there are any), then one pass over the guest's memory that copies the texts
/// and writes the records. wasmtime's generic lowering looks the guest's memory up again for
/// every field it writes; this writes the same bytes with one look-up per batch. Any other
/// string encoding takes the generic lowering of `[SampleRef]`.
pub(crate) struct SampleList<'a>(&'a [Sample]);

impl SampleList<'_> {
    fn refs(&self) -> Vec<SampleRef<'_>> {
        self.0.iter().map(Into::into).collect()
    }
}

// SAFETY: the type, ABI and type check of `[SampleRef]` (`list<sample>`), whose derived type
// check holds the field names and order that the offsets below follow.
unsafe impl ComponentType for SampleList<'_> {
    type Lower = <[SampleRef<'static>] as ComponentType>::Lower;
    const ABI: CanonicalAbiInfo = <[SampleRef<'static>] as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <[SampleRef<'static>] as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: the memory written is what the generic lowering writes: every record of the list at
// `SampleRef::SIZE32` strides from a `cx.realloc`ed block, each field at its canonical ABI
// offset, every text in a block of its own from `cx.realloc` (an empty text, which owns no
// memory, as the pointer 1 and length 0).
unsafe impl Lower for SampleList<'_> {
    fn linear_lower_to_flat<U>(&self, cx: &mut LowerContext<'_, U>, ty: InterfaceType, dst: &mut MaybeUninit<Self::Lower>) -> wasmtime::Result<()> {
        if cx.options().string_encoding != StringEncoding::Utf8 {
            return self.refs().as_slice().linear_lower_to_flat(cx, ty, dst);
        }
        let (ptr, len) = self.store(cx, ty)?;
        dst.write([ValRaw::i64(ptr as i64), ValRaw::i64(len as i64)]);
        Ok(())
    }

    fn linear_lower_to_memory<U>(&self, cx: &mut LowerContext<'_, U>, ty: InterfaceType, offset: usize) -> wasmtime::Result<()> {
        if cx.options().string_encoding != StringEncoding::Utf8 {
            return self.refs().as_slice().linear_lower_to_memory(cx, ty, offset);
        }
        let (ptr, len) = self.store(cx, ty)?;
        *cx.get::<4>(offset) = (ptr as u32).to_le_bytes();
        *cx.get::<4>(offset + 4) = (len as u32).to_le_bytes();
        Ok(())
    }
}

/// Field offsets of `record sample` and `record generation` (canonical ABI, 32-bit memory).
struct Layout {
    /// id, instruction-type, instruction, response, the two generations, verdicts, metadata.
    sample: [usize; 8],
    /// finish-reason, stop-sequence (its payload at `stop_payload`), the three counts.
    generation: [usize; 5],
    stop_payload: usize,
}

/// The canonical ABI offsets (32-bit memory) of a record's fields, in order.
pub(super) fn offsets<const N: usize>(fields: [CanonicalAbiInfo; N]) -> [usize; N] {
    let mut at = 0u32;
    fields.map(|f| f.next_field32(&mut at) as usize)
}

impl Layout {
    fn new() -> Layout {
        let text = <&str as ComponentType>::ABI;
        let count = <u32 as ComponentType>::ABI;
        Layout {
            sample: offsets([
                text.clone(),
                text.clone(),
                text.clone(),
                text.clone(),
                GenerationRef::ABI,
                GenerationRef::ABI,
                <List<VerdictRef<'static>> as ComponentType>::ABI,
                <List<EntryRef<'static>> as ComponentType>::ABI,
            ]),
            generation: offsets([<wit::FinishReason as ComponentType>::ABI, <Option<&str> as ComponentType>::ABI, count.clone(), count.clone(), count]),
            stop_payload: offsets([<u8 as ComponentType>::ABI, text])[1],
        }
    }
}

/// The case number of a WIT enum value: its flat lowering, a single value.
fn enum_case<U, E: Lower>(cx: &mut LowerContext<'_, U>, value: E, ty: InterfaceType) -> wasmtime::Result<u32> {
    assert_eq!(std::mem::size_of::<E::Lower>(), std::mem::size_of::<ValRaw>(), "an enum lowers to one flat value");
    let mut flat = MaybeUninit::<E::Lower>::uninit();
    value.linear_lower_to_flat(cx, ty, &mut flat)?;
    // SAFETY: written just above, and one `ValRaw` in size (asserted).
    Ok(unsafe { std::ptr::read(flat.as_ptr() as *const ValRaw) }.get_u32())
}

/// The fields (names and types) of a record type.
fn record_fields(types: &wasmtime::component::__internal::ComponentTypes, ty: InterfaceType) -> &[wasmtime::component::__internal::wasmtime_environ::component::RecordField] {
    match ty {
        InterfaceType::Record(r) => &types[r].fields,
        _ => unreachable!("type-checked as a record"),
    }
}

impl<'a> SampleList<'a> {
    /// Both passes; returns the list's (pointer, length).
    fn store<U>(&self, cx: &mut LowerContext<'_, U>, ty: InterfaceType) -> wasmtime::Result<(usize, usize)> {
        let samples = self.0;
        let element = match ty {
            InterfaceType::List(l) => cx.types[l].element,
            _ => unreachable!("type-checked as a list"),
        };
        let fields = record_fields(cx.types, element);
        let (generation, verdicts, metadata) = (fields[4].ty, fields[6].ty, fields[7].ty);
        let finish_reason = record_fields(cx.types, generation)[0].ty;
        let layout = Layout::new();
        let size = SampleRef::SIZE32;
        let bytes = samples.len().checked_mul(size).ok_or_else(|| wasmtime::format_err!("size overflow copying a list"))?;
        let base = cx.realloc(0, 0, SampleRef::ALIGN32, bytes)?;
        // Pass 1: allocations, and the guest words of each sample in this order: the four
        // texts' pointers; per generation, its stop sequence's pointer (when present) and its
        // finish reason's case; then the verdicts' and the metadata's (pointer, length).
        let mut words: Vec<u32> = Vec::with_capacity(samples.len() * 10);
        let place = |cx: &mut LowerContext<'_, U>, t: &str| -> wasmtime::Result<u32> {
            if t.len() > (1 << 31) - 1 {
                wasmtime::bail!("string length of {} too large to copy into wasm", t.len());
            }
            Ok(if t.is_empty() { 1 } else { cx.realloc(0, 0, 1, t.len())? as u32 })
        };
        for s in samples {
            for t in [&s.id, &s.instruction_type, &s.instruction, &s.response] {
                words.push(place(cx, t)?);
            }
            for g in [&s.instruction_generation, &s.response_generation] {
                if let Some(stop) = &g.stop_sequence {
                    words.push(place(cx, stop)?);
                }
                words.push(enum_case(cx, wit::FinishReason::from(g.finish_reason), finish_reason)?);
            }
            // Empty vectors do not allocate: a sample without verdicts or metadata costs nothing here.
            let (vp, vn) = List(s.verdicts.iter().map(VerdictRef::from).collect()).lower_flat(cx, verdicts)?;
            let (mp, mn) = List(s.metadata.iter().map(|(key, value)| EntryRef { key, value }).collect()).lower_flat(cx, metadata)?;
            words.extend([vp, vn, mp, mn]);
        }
        // Pass 2: one view of the guest's memory for the whole batch.
        let mem = cx.as_slice_mut();
        if base + bytes > mem.len() {
            wasmtime::bail!("the guest's allocator returned memory out of bounds");
        }
        let put = |mem: &mut [u8], at: usize, v: u32| mem[at..at + 4].copy_from_slice(&v.to_le_bytes());
        let copy = |mem: &mut [u8], at: usize, ptr: u32, t: &str| -> wasmtime::Result<()> {
            if !t.is_empty() {
                mem.get_mut(ptr as usize..ptr as usize + t.len())
                    .ok_or_else(|| wasmtime::format_err!("the guest's allocator returned memory out of bounds"))?
                    .copy_from_slice(t.as_bytes());
            }
            put(mem, at, ptr);
            put(mem, at + 4, t.len() as u32);
            Ok(())
        };
        let mut word = words.iter().copied();
        let mut next = || word.next().expect("the words of pass 1");
        for (i, s) in samples.iter().enumerate() {
            let rec = base + i * size;
            for (k, t) in [&s.id, &s.instruction_type, &s.instruction, &s.response].into_iter().enumerate() {
                copy(mem, rec + layout.sample[k], next(), t)?;
            }
            let o = &layout.generation;
            for (k, g) in [&s.instruction_generation, &s.response_generation].into_iter().enumerate() {
                let at = rec + layout.sample[4 + k];
                match &g.stop_sequence {
                    Some(stop) => {
                        mem[at + o[1]] = 1;
                        copy(mem, at + o[1] + layout.stop_payload, next(), stop)?;
                    }
                    None => mem[at + o[1]] = 0,
                }
                mem[at + o[0]] = next() as u8;
                put(mem, at + o[2], g.prompt_tokens);
                put(mem, at + o[3], g.completion_tokens);
                put(mem, at + o[4], g.max_tokens);
            }
            for k in 0..2 {
                put(mem, rec + layout.sample[6 + k], next());
                put(mem, rec + layout.sample[6 + k] + 4, next());
            }
        }
        Ok((base, samples.len()))
    }
}

impl<T: Lower> List<T> {
    /// Lowered to its (pointer, length), without writing them anywhere.
    fn lower_flat<U>(&self, cx: &mut LowerContext<'_, U>, ty: InterfaceType) -> wasmtime::Result<(u32, u32)> {
        let mut flat = MaybeUninit::<[ValRaw; 2]>::uninit();
        self.linear_lower_to_flat(cx, ty, &mut flat)?;
        // SAFETY: written just above.
        let [p, n] = unsafe { flat.assume_init() };
        Ok((p.get_i64() as u32, n.get_i64() as u32))
    }
}
