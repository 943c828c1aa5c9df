//! ggml type ids for the formats attnrot implements (values of `enum ggml_type`).

/// The ggml types attnrot knows. Discriminants equal `enum ggml_type` of the pinned ggml.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    IQ4_NL = 20,
    BF16 = 30,
}

impl GgmlType {
    /// The eight KV-cache formats.
    pub const KV: [GgmlType; 8] = [
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::IQ4_NL,
    ];
    /// The six quantized KV-cache formats (the ones with a choice of block to make).
    pub const KV_QUANTIZED: [GgmlType; 6] = [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::IQ4_NL,
    ];
    pub const ALL: [GgmlType; 10] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::IQ4_NL,
        GgmlType::BF16,
    ];

    pub fn from_id(id: i64) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| *t as i64 == id)
    }

    /// ggml's type name (`ggml_type_name`).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "f32",
            GgmlType::F16 => "f16",
            GgmlType::Q4_0 => "q4_0",
            GgmlType::Q4_1 => "q4_1",
            GgmlType::Q5_0 => "q5_0",
            GgmlType::Q5_1 => "q5_1",
            GgmlType::Q8_0 => "q8_0",
            GgmlType::Q8_1 => "q8_1",
            GgmlType::IQ4_NL => "iq4_nl",
            GgmlType::BF16 => "bf16",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        let n = name.to_ascii_lowercase();
        Self::ALL.iter().copied().find(|t| t.name() == n)
    }

    /// Elements per block (`blck_size`).
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            _ => 32,
        }
    }

    /// Bytes per block (`type_size`).
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q8_1 => 36,
            GgmlType::IQ4_NL => 18,
        }
    }

    /// The type the other operand of this type's `vec_dot` is converted to (`vec_dot_type`).
    pub fn vec_dot_type(self) -> GgmlType {
        match self {
            GgmlType::F32 => GgmlType::F32,
            GgmlType::F16 => GgmlType::F16,
            GgmlType::BF16 => GgmlType::BF16,
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q8_1 => GgmlType::Q8_1,
            _ => GgmlType::Q8_0,
        }
    }

    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes of a row of `n` elements (`ggml_row_size`), or an error if `n` is not a block multiple.
    pub fn row_bytes(self, n: usize) -> crate::Result<usize> {
        let b = self.block_size();
        if !n.is_multiple_of(b) {
            return Err(crate::Error::NotBlockMultiple {
                ty: self,
                len: n,
                block: b,
            });
        }
        (n / b)
            .checked_mul(self.block_bytes())
            .ok_or(crate::Error::Overflow)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
