//! The instruction set a kernel runs with: one enum for every kernel family, detected
//! once per operation. Each variant includes the ones before it on its architecture,
//! and every SIMD path gives the bits of the portable one (tested per kernel).

/// Instruction set, as detected at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// The portable code (whatever the compile target guarantees).
    Baseline,
    /// x86-64 AVX2 with FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// x86-64 AVX2 plus AVX-512 F, BW and VL.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// [`Isa::Avx512`] plus VNNI (`vpdpbusd`), used by the integer kernels.
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    /// aarch64 NEON (every aarch64 CPU has it).
    #[cfg(target_arch = "aarch64")]
    Neon,
}

impl Isa {
    /// The widest instruction set this CPU runs.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if !(has!("avx2") && has!("fma") && has!("f16c")) {
                Isa::Baseline
            } else if !(has!("avx512f") && has!("avx512bw") && has!("avx512vl")) {
                Isa::Avx2
            } else if !has!("avx512vnni") {
                Isa::Avx512
            } else {
                Isa::Avx512Vnni
            }
        }
        #[cfg(target_arch = "aarch64")]
        return Isa::Neon;
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        Isa::Baseline
    }

    /// [`Isa::detect`] where `use_simd`, else [`Isa::Baseline`].
    pub fn select(use_simd: bool) -> Isa {
        if use_simd {
            Isa::detect()
        } else {
            Isa::Baseline
        }
    }

    /// Every instruction set this CPU runs, portable first (what tests compare).
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Baseline];
        #[cfg(target_arch = "x86_64")]
        {
            let best = Isa::detect();
            v.extend(
                [Isa::Avx2, Isa::Avx512, Isa::Avx512Vnni]
                    .into_iter()
                    .filter(|&i| i as u8 <= best as u8 && best != Isa::Baseline),
            );
        }
        #[cfg(target_arch = "aarch64")]
        v.push(Isa::Neon);
        v
    }

    /// `self` if this CPU runs it, else [`Isa::Baseline`]: what a public kernel taking
    /// an `Isa` from its caller dispatches on, so no caller can select instructions the
    /// CPU lacks.
    pub fn runnable(self) -> Isa {
        // Each variant includes the ones before it on its architecture.
        if self as u8 <= Isa::detect() as u8 {
            self
        } else {
            Isa::Baseline
        }
    }

    /// Whether the x86-64 AVX2 kernels may run (AVX2, FMA and F16C are there).
    pub fn has_avx2(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self != Isa::Baseline;
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// Whether the AVX-512 (F, BW, VL) kernels may run.
    pub fn has_avx512(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return matches!(self, Isa::Avx512 | Isa::Avx512Vnni);
        #[cfg(not(target_arch = "x86_64"))]
        false
    }
}
