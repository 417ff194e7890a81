//! The key/value cache as a pool of sequence slots.
//!
//! Each slot holds the keys and values of one sequence, up to the pool's context length,
//! in every layer. A slot's memory is an anonymous mapping made when the slot is first
//! written and unmapped when it is released, so a slot never used holds no memory, and
//! positions not yet written are pages the system has not committed. (The engine keeps
//! a finished sequence's slot mapped, with its tokens, for prefix reuse.) Storage is f32 or
//! f16 ([`KvType`]); attention converts f16 to f32 exactly before the same arithmetic.

use memmap2::MmapMut;

use crate::config::ModelArgs;
use crate::error::{Error, Result};
use crate::kernels::convert::f32_to_f16;

/// Element type of the cached keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    /// 32-bit floats: what the float32 reference computes with ([`crate::Precision::Exact`]).
    F32,
    /// IEEE half precision, rounded to nearest even as llama.cpp stores its cache: half
    /// the memory of f32.
    #[default]
    F16,
}

impl KvType {
    /// Bytes per cached value.
    pub fn bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }

    /// Lower-case name (`f32`, `f16`).
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        }
    }
}

/// One layer's cached keys or values of one slot, as attention reads them: `ctx` rows of
/// `kv_dim` values.
#[derive(Clone, Copy, Debug)]
pub enum KvRows<'a> {
    /// f32 storage.
    F32(&'a [f32]),
    /// f16 storage (IEEE half bit patterns).
    F16(&'a [u16]),
}

/// Keys and values of every layer for a fixed number of sequence slots.
#[derive(Debug)]
pub struct KvPool {
    kv_type: KvType,
    ctx: usize,
    kv_dim: usize,
    n_layers: usize,
    /// Values per layer and per keys-or-values half of a slot: `ctx * kv_dim`.
    plane: usize,
    /// Bytes of one slot: `n_layers * 2 * plane * kv_type.bytes()`.
    slot_bytes: usize,
    /// Per slot: its mapping once written, laid out `[layer][keys, values][ctx][kv_dim]`.
    slots: Vec<Option<MmapMut>>,
}

impl KvPool {
    /// A pool of `slots` sequences of up to `ctx` positions for a model of shape `args`.
    /// Reserves nothing yet; fails if the sizes overflow.
    pub fn new(args: &ModelArgs, slots: usize, ctx: usize, kv_type: KvType) -> Result<KvPool> {
        if slots == 0 || ctx == 0 {
            return Err(Error::InvalidArgument(
                "a KV cache needs at least one slot and one position".into(),
            ));
        }
        let kv_dim = args.n_kv_heads() * args.head_dim();
        let plane = ctx.checked_mul(kv_dim);
        let slot_bytes = plane
            .and_then(|p| p.checked_mul(2 * kv_type.bytes()))
            .and_then(|b| b.checked_mul(args.n_layers))
            .filter(|b| {
                b.checked_mul(slots)
                    .is_some_and(|t| t <= isize::MAX as usize)
            });
        let (Some(plane), Some(slot_bytes)) = (plane, slot_bytes) else {
            return Err(Error::InvalidArgument(format!(
                "a KV cache of {slots} slots x {ctx} positions x {kv_dim} values x {} layers \
                 does not fit in memory",
                args.n_layers
            )));
        };
        Ok(KvPool {
            kv_type,
            ctx,
            kv_dim,
            n_layers: args.n_layers,
            plane,
            slot_bytes,
            slots: (0..slots).map(|_| None).collect(),
        })
    }

    /// Number of sequence slots.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Positions per slot.
    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// Storage type.
    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// Bytes one slot holds when full.
    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    /// Bytes of all slots when full: the most this pool can hold.
    pub fn reserved_bytes(&self) -> usize {
        self.slot_bytes * self.slots.len()
    }

    /// Slots that hold memory now (written and not released).
    pub fn mapped_slots(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Whether `slot` holds memory.
    pub fn is_mapped(&self, slot: usize) -> bool {
        self.slots.get(slot).is_some_and(Option::is_some)
    }

    /// Gives `slot`'s memory back to the system; its cached positions are lost.
    pub fn release(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            *s = None;
        }
    }

    /// Maps `slot`'s memory if it has none (zeroed, committed by the system as written).
    pub fn ensure(&mut self, slot: usize) -> Result<()> {
        let bytes = self.slot_bytes;
        let s = self
            .slots
            .get_mut(slot)
            .ok_or_else(|| Error::InvalidArgument(format!("KV slot {slot} does not exist")))?;
        if s.is_none() {
            let map = MmapMut::map_anon(bytes).map_err(|e| {
                Error::InvalidArgument(format!("cannot reserve {bytes} bytes of KV cache: {e}"))
            })?;
            *s = Some(map);
        }
        Ok(())
    }

    /// Stores one position's keys and values (`kv_dim` each) in `layer` of `slot`, which
    /// must be mapped ([`KvPool::ensure`]).
    pub(crate) fn write(&mut self, slot: usize, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        assert!(pos < self.ctx && layer < self.n_layers && k.len() == self.kv_dim);
        assert_eq!(v.len(), self.kv_dim);
        let (plane, kv_dim, kv_type) = (self.plane, self.kv_dim, self.kv_type);
        let map = self.slots[slot]
            .as_mut()
            .expect("KV slot mapped before writing");
        let at = layer * 2 * plane + pos * kv_dim;
        match kv_type {
            KvType::F32 => {
                let all = as_f32_mut(map);
                all[at..at + kv_dim].copy_from_slice(k);
                all[plane + at..plane + at + kv_dim].copy_from_slice(v);
            }
            KvType::F16 => {
                let all = as_u16_mut(map);
                f32_to_f16(k, &mut all[at..at + kv_dim]);
                f32_to_f16(v, &mut all[plane + at..plane + at + kv_dim]);
            }
        }
    }

    /// Keys and values of `layer` in `slot` (`ctx` rows of `kv_dim`), or `None` for a slot
    /// that holds no memory.
    pub(crate) fn layer(&self, slot: usize, layer: usize) -> Option<(KvRows<'_>, KvRows<'_>)> {
        let map = self.slots.get(slot)?.as_ref()?;
        let (plane, at) = (self.plane, layer * 2 * self.plane);
        Some(match self.kv_type {
            KvType::F32 => {
                let all = as_f32(map);
                (
                    KvRows::F32(&all[at..at + plane]),
                    KvRows::F32(&all[at + plane..at + 2 * plane]),
                )
            }
            KvType::F16 => {
                let all = as_u16(map);
                (
                    KvRows::F16(&all[at..at + plane]),
                    KvRows::F16(&all[at + plane..at + 2 * plane]),
                )
            }
        })
    }
}

fn as_f32(map: &MmapMut) -> &[f32] {
    // SAFETY: the mapping is page-aligned (so aligned for f32), its length is a multiple
    // of 4 (slot_bytes counts whole f32 values), every bit pattern is a valid f32, and the
    // returned slice borrows the mapping.
    unsafe { std::slice::from_raw_parts(map.as_ptr().cast::<f32>(), map.len() / 4) }
}

fn as_f32_mut(map: &mut MmapMut) -> &mut [f32] {
    // SAFETY: as in `as_f32`, and the mutable borrow of the mapping is held for the slice.
    unsafe { std::slice::from_raw_parts_mut(map.as_mut_ptr().cast::<f32>(), map.len() / 4) }
}

fn as_u16(map: &MmapMut) -> &[u16] {
    // SAFETY: page-aligned, length a multiple of 2, any bit pattern is a valid u16.
    unsafe { std::slice::from_raw_parts(map.as_ptr().cast::<u16>(), map.len() / 2) }
}

fn as_u16_mut(map: &mut MmapMut) -> &mut [u16] {
    // SAFETY: as in `as_u16`, with the mapping borrowed mutably for the slice.
    unsafe { std::slice::from_raw_parts_mut(map.as_mut_ptr().cast::<u16>(), map.len() / 2) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::convert::f16_to_f32;

    fn args() -> ModelArgs {
        ModelArgs {
            dim: 64,
            n_layers: 3,
            n_heads: 4,
            n_kv_heads: Some(2),
            ..ModelArgs::default()
        }
    }

    #[test]
    fn f16_halves_f32_and_nothing_is_held_until_written() {
        let a = args();
        let f32_pool = KvPool::new(&a, 4, 128, KvType::F32).unwrap();
        let mut f16_pool = KvPool::new(&a, 4, 128, KvType::F16).unwrap();
        // 3 layers x (keys + values) x 128 positions x 32 values.
        assert_eq!(f32_pool.slot_bytes(), 3 * 2 * 128 * 32 * 4);
        assert_eq!(f16_pool.reserved_bytes() * 2, f32_pool.reserved_bytes());
        assert_eq!(f16_pool.mapped_slots(), 0);
        f16_pool.ensure(2).unwrap();
        assert_eq!(f16_pool.mapped_slots(), 1);
        assert!(f16_pool.layer(0, 0).is_none());
        f16_pool.release(2);
        assert_eq!(f16_pool.mapped_slots(), 0);
        assert!(f16_pool.ensure(4).is_err());
    }

    #[test]
    fn absurd_sizes_are_refused() {
        let a = args();
        assert!(KvPool::new(&a, usize::MAX / 2, 1 << 40, KvType::F32).is_err());
        assert!(KvPool::new(&a, 0, 16, KvType::F32).is_err());
    }

    #[test]
    fn f16_rounds_to_nearest_even_and_widens_exactly() {
        let vals: Vec<f32> = (0..1000)
            .map(|i| ((i as f32) * 0.7311).sin() * 10f32.powi(i % 9 - 4))
            .chain([65520.0, -1e-8, 0.0, -0.0, 1.0 + 1.0 / 2048.0])
            .collect();
        let mut bits = vec![0u16; vals.len()];
        f32_to_f16(&vals, &mut bits);
        let mut back = vec![0f32; vals.len()];
        f16_to_f32(&bits, &mut back);
        for ((v, b), w) in vals.iter().zip(&bits).zip(&back) {
            let expect = half::f16::from_f32(*v);
            assert_eq!(*b, expect.to_bits(), "{v}");
            assert_eq!(w.to_bits(), expect.to_f32().to_bits(), "{v}");
        }
    }

    #[test]
    fn writes_land_in_their_slot_layer_and_position() {
        for t in [KvType::F32, KvType::F16] {
            let mut pool = KvPool::new(&args(), 2, 8, t).unwrap();
            pool.ensure(1).unwrap();
            let k: Vec<f32> = (0..32).map(|i| i as f32).collect();
            let v: Vec<f32> = (0..32).map(|i| -(i as f32)).collect();
            pool.write(1, 2, 5, &k, &v);
            let (keys, values) = pool.layer(1, 2).unwrap();
            let get = |r: KvRows<'_>, i: usize| match r {
                KvRows::F32(x) => x[i],
                KvRows::F16(x) => half::f16::from_bits(x[i]).to_f32(),
            };
            assert_eq!(get(keys, 5 * 32 + 7), 7.0);
            assert_eq!(get(values, 5 * 32 + 7), -7.0);
            assert_eq!(get(keys, 4 * 32 + 7), 0.0);
            let (k0, _) = pool.layer(1, 1).unwrap();
            assert_eq!(get(k0, 5 * 32 + 7), 0.0);
        }
    }
}
