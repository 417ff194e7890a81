//! A restricted unpickler for the `data.pkl` of a `torch.save` state dict.
//!
//! The pickle is *interpreted as data*: nothing is imported or called. Only the opcodes
//! `torch.save` emits for a dict of tensors (protocol 2, plus the protocol 4/5 framing
//! and string opcodes) are understood, and only a fixed set of globals may appear
//! (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
//! `torch._utils._rebuild_parameter` and the bf16/f16/f32 storage classes). Anything else
//! is an error that names the offending opcode or global.
//!
//! Hostile input is expected: every length is checked against the remaining input
//! before allocating, the stack, memo and nesting depth are bounded, shared values are
//! reference-counted (so `BINGET` cannot blow up memory), and nothing recurses on the
//! input's structure beyond the bounded nesting depth.

use std::collections::HashMap;
use std::rc::Rc;

use crate::dtype::DType;

/// Maximum number of values on the unpickler stack.
const MAX_STACK: usize = 1 << 20;
/// Maximum number of memo entries.
const MAX_MEMO: usize = 1 << 20;
/// Maximum nesting of tuples, lists and dicts (real state dicts need about 4).
const MAX_DEPTH: u32 = 64;
/// Maximum number of elements copied when a shared list or dict is mutated
/// (copy-on-write); bounds the work a crafted pickle can cause.
const MAX_COPY_WORK: usize = 1 << 24;
/// Longest name shown in an error message.
const MAX_SHOWN: usize = 80;

/// Why a `data.pkl` could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PickleError {
    /// The data ended in the middle of an opcode or before `STOP`.
    #[error("pickle data is truncated at byte {0}")]
    Truncated(usize),
    /// An opcode this reader does not interpret.
    #[error("pickle opcode {name} (0x{op:02x}) at byte {pos} is not supported: only tensors of a state dict are loaded")]
    UnsupportedOpcode {
        /// The opcode byte.
        op: u8,
        /// Its name in `pickletools`, or `unknown`.
        name: &'static str,
        /// Offset of the opcode.
        pos: usize,
    },
    /// A global outside the allowed set.
    #[error("pickle global '{0}' is not allowed: only tensors of a state dict are loaded")]
    ForbiddenGlobal(String),
    /// A size limit was exceeded.
    #[error("pickle exceeds a safety limit: {0}")]
    Limit(String),
    /// The opcodes are well-formed but do not describe a state dict of tensors.
    #[error("invalid pickle at byte {pos}: {msg}")]
    Invalid {
        /// Offset of the opcode at fault (or the end of data).
        pos: usize,
        /// What is wrong.
        msg: String,
    },
}

/// One tensor of the state dict, as the pickle describes it: a view into a storage
/// stored elsewhere in the archive (`data/<storage_key>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorRef {
    /// Name of the storage record (`data/<key>` in the zip).
    pub storage_key: String,
    /// Element type, from the storage class.
    pub dtype: DType,
    /// Number of elements the storage holds, as recorded in the pickle.
    pub storage_numel: usize,
    /// Offset of the tensor's first element in the storage, in elements.
    pub offset: usize,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Strides in elements, outermost first.
    pub stride: Vec<usize>,
}

/// Callables and classes the reader knows; every other global is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Storage(DType),
}

impl Global {
    fn lookup(module: &str, name: &str) -> Option<Global> {
        Some(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch", "BFloat16Storage") => Global::Storage(DType::BF16),
            ("torch", "HalfStorage") => Global::Storage(DType::F16),
            ("torch", "FloatStorage") => Global::Storage(DType::F32),
            _ => return None,
        })
    }
}

/// A storage reference from a persistent id.
#[derive(Debug)]
struct StorageRef {
    key: String,
    dtype: DType,
    numel: usize,
}

#[derive(Clone, Debug)]
struct Seq {
    items: Vec<Value>,
    depth: u32,
}

#[derive(Clone, Debug)]
struct Map {
    items: Vec<(Value, Value)>,
    depth: u32,
}

/// A pickled value. Containers are reference-counted so memo reads are O(1).
#[derive(Clone, Debug)]
enum Value {
    None,
    // Booleans, floats and bytes are accepted but never inspected.
    Bool,
    Int(i64),
    Float,
    Str(Rc<str>),
    Bytes,
    Tuple(Rc<Seq>),
    List(Rc<Seq>),
    Dict(Rc<Map>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

impl Value {
    fn depth(&self) -> u32 {
        match self {
            Value::Tuple(s) | Value::List(s) => s.depth,
            Value::Dict(m) => m.depth,
            _ => 0,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "bool",
            Value::Int(_) => "int",
            Value::Float => "float",
            Value::Str(_) => "str",
            Value::Bytes => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

/// Shortens and escapes text taken from the input before it goes into a message.
fn shown(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(MAX_SHOWN)
        .flat_map(char::escape_debug)
        .collect();
    if s.chars().count() > MAX_SHOWN {
        out.push('…');
    }
    out
}

fn opcode_name(op: u8) -> &'static str {
    match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "unknown",
    }
}

/// The unpickler's state: input cursor, value stack, mark stack and memo.
struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset of the opcode being executed, for messages.
    op_pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    copy_work: usize,
}

impl<'a> Machine<'a> {
    fn invalid(&self, msg: impl Into<String>) -> PickleError {
        PickleError::Invalid {
            pos: self.op_pos,
            msg: msg.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or(PickleError::Truncated(self.data.len()))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// Reads a length prefix and converts it to `usize`; `take` then checks it
    /// against the remaining input before anything is allocated.
    fn len_u32(&mut self) -> Result<usize, PickleError> {
        usize::try_from(u32::from_le_bytes(self.array()?))
            .map_err(|_| self.invalid("length overflows"))
    }

    fn len_u64(&mut self) -> Result<usize, PickleError> {
        usize::try_from(u64::from_le_bytes(self.array()?))
            .map_err(|_| PickleError::Truncated(self.data.len()))
    }

    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Truncated(self.data.len()))?;
        let s = self.take(n)?;
        self.pos += 1; // the newline
        std::str::from_utf8(s).map_err(|_| self.invalid("GLOBAL name is not UTF-8"))
    }

    fn utf8(&mut self, n: usize) -> Result<Value, PickleError> {
        let bytes = self.take(n)?;
        let s =
            std::str::from_utf8(bytes).map_err(|_| self.invalid("string is not valid UTF-8"))?;
        Ok(Value::Str(Rc::from(s)))
    }

    fn push(&mut self, v: Value) -> Result<(), PickleError> {
        if self.stack.len() >= MAX_STACK {
            return Err(PickleError::Limit(format!(
                "more than {MAX_STACK} values on the stack"
            )));
        }
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        // Values below the innermost mark belong to an outer frame.
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.invalid("stack underflow"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.invalid("stack underflow"))
    }

    fn top_mut(&mut self) -> Result<&mut Value, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.invalid("stack underflow"));
        }
        let pos = self.op_pos;
        self.stack.last_mut().ok_or(PickleError::Invalid {
            pos,
            msg: "stack underflow".into(),
        })
    }

    /// Pops everything above the innermost mark, and the mark.
    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.invalid("no MARK on the stack"))?;
        if m > self.stack.len() {
            return Err(self.invalid("MARK above the stack"));
        }
        Ok(self.stack.split_off(m))
    }

    fn seq(&self, items: Vec<Value>) -> Result<Seq, PickleError> {
        let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(PickleError::Limit(format!(
                "nesting deeper than {MAX_DEPTH}"
            )));
        }
        Ok(Seq { items, depth })
    }

    fn tuple(&self, items: Vec<Value>) -> Result<Value, PickleError> {
        Ok(Value::Tuple(Rc::new(self.seq(items)?)))
    }

    fn memo_put(&mut self, key: u32) -> Result<(), PickleError> {
        let v = self.top_mut()?.clone();
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&key) {
            return Err(PickleError::Limit(format!(
                "more than {MAX_MEMO} memo entries"
            )));
        }
        self.memo.insert(key, v);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<(), PickleError> {
        let v = self
            .memo
            .get(&key)
            .cloned()
            .ok_or_else(|| self.invalid(format!("memo key {key} is not defined")))?;
        self.push(v)
    }

    /// Counts elements copied when a shared container is mutated.
    fn charge(&mut self, n: usize) -> Result<(), PickleError> {
        self.copy_work = self.copy_work.saturating_add(n);
        if self.copy_work > MAX_COPY_WORK {
            return Err(PickleError::Limit(
                "too much copying of shared containers".into(),
            ));
        }
        Ok(())
    }

    /// Adds key/value pairs to the dict on top of the stack.
    fn set_items(&mut self, pairs: Vec<Value>) -> Result<(), PickleError> {
        if !pairs.len().is_multiple_of(2) {
            return Err(self.invalid("SETITEMS with an odd number of values"));
        }
        let child_depth = pairs.iter().map(Value::depth).max().unwrap_or(0);
        if child_depth + 1 > MAX_DEPTH {
            return Err(PickleError::Limit(format!(
                "nesting deeper than {MAX_DEPTH}"
            )));
        }
        let pos = self.op_pos;
        let top = self.top_mut()?;
        let Value::Dict(rc) = top else {
            let kind = top.kind();
            return Err(PickleError::Invalid {
                pos,
                msg: format!("SETITEM(S) on a {kind}, not a dict"),
            });
        };
        let shared_len = if Rc::strong_count(rc) > 1 {
            rc.items.len()
        } else {
            0
        };
        self.charge(shared_len)?;
        let Some(Value::Dict(rc)) = self.stack.last_mut() else {
            return Err(self.invalid("stack underflow"));
        };
        let map = Rc::make_mut(rc);
        map.depth = map.depth.max(child_depth + 1);
        let mut it = pairs.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            map.items.push((k, v));
        }
        Ok(())
    }

    /// Appends values to the list on top of the stack.
    fn append(&mut self, values: Vec<Value>) -> Result<(), PickleError> {
        let child_depth = values.iter().map(Value::depth).max().unwrap_or(0);
        if child_depth + 1 > MAX_DEPTH {
            return Err(PickleError::Limit(format!(
                "nesting deeper than {MAX_DEPTH}"
            )));
        }
        let pos = self.op_pos;
        let top = self.top_mut()?;
        let Value::List(rc) = top else {
            let kind = top.kind();
            return Err(PickleError::Invalid {
                pos,
                msg: format!("APPEND(S) on a {kind}, not a list"),
            });
        };
        let shared_len = if Rc::strong_count(rc) > 1 {
            rc.items.len()
        } else {
            0
        };
        self.charge(shared_len)?;
        let Some(Value::List(rc)) = self.stack.last_mut() else {
            return Err(self.invalid("stack underflow"));
        };
        let seq = Rc::make_mut(rc);
        seq.depth = seq.depth.max(child_depth + 1);
        seq.items.extend(values);
        Ok(())
    }

    fn global(&self, module: &str, name: &str) -> Result<Value, PickleError> {
        Global::lookup(module, name)
            .map(Value::Global)
            .ok_or_else(|| {
                PickleError::ForbiddenGlobal(format!("{}.{}", shown(module), shown(name)))
            })
    }

    fn int(&self, v: &Value, what: &str) -> Result<usize, PickleError> {
        match v {
            Value::Int(i) => {
                usize::try_from(*i).map_err(|_| self.invalid(format!("{what} {i} is negative")))
            }
            other => Err(self.invalid(format!("{what} is a {}, expected an int", other.kind()))),
        }
    }

    fn ints(&self, v: &Value, what: &str) -> Result<Vec<usize>, PickleError> {
        match v {
            Value::Tuple(s) => s.items.iter().map(|x| self.int(x, what)).collect(),
            other => Err(self.invalid(format!("{what} is a {}, expected a tuple", other.kind()))),
        }
    }

    /// `BINPERSID`: `("storage", StorageClass, key, location, numel)`.
    fn persistent_load(&self, pid: Value) -> Result<Value, PickleError> {
        let Value::Tuple(t) = &pid else {
            return Err(self.invalid(format!(
                "persistent id is a {}, expected a tuple",
                pid.kind()
            )));
        };
        match t.items.as_slice() {
            [Value::Str(tag), Value::Global(Global::Storage(dtype)), Value::Str(key), Value::Str(_location), numel]
                if &**tag == "storage" =>
            {
                let numel = self.int(numel, "storage size")?;
                Ok(Value::Storage(Rc::new(StorageRef {
                    key: key.to_string(),
                    dtype: *dtype,
                    numel,
                })))
            }
            [Value::Str(tag), ..] if &**tag == "storage" => Err(self.invalid(
                "persistent id must be (\"storage\", <bf16/f16/f32 storage class>, key, location, numel)",
            )),
            [Value::Str(tag), ..] => Err(self.invalid(format!(
                "persistent id of type '{}' is not supported",
                shown(tag)
            ))),
            _ => Err(self.invalid("persistent id is not a storage record")),
        }
    }

    /// `REDUCE`: only the allowed callables, interpreted here.
    fn reduce(&self, callable: Value, args: Value) -> Result<Value, PickleError> {
        let Value::Global(g) = callable else {
            return Err(self.invalid(format!(
                "REDUCE on a {}, expected an allowed global",
                callable.kind()
            )));
        };
        let Value::Tuple(args) = args else {
            return Err(self.invalid(format!(
                "REDUCE arguments are a {}, expected a tuple",
                args.kind()
            )));
        };
        let args = args.items.as_slice();
        match g {
            Global::OrderedDict => {
                if !args.is_empty() {
                    return Err(self.invalid("OrderedDict() with arguments is not supported"));
                }
                Ok(Value::Dict(Rc::new(Map {
                    items: Vec::new(),
                    depth: 1,
                })))
            }
            Global::RebuildTensorV2 => {
                // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
                if !(6..=7).contains(&args.len()) {
                    return Err(self.invalid(format!(
                        "_rebuild_tensor_v2 takes 6 or 7 arguments, got {}",
                        args.len()
                    )));
                }
                let Value::Storage(st) = &args[0] else {
                    return Err(self.invalid(format!(
                        "_rebuild_tensor_v2 storage is a {}, expected a storage",
                        args[0].kind()
                    )));
                };
                let offset = self.int(&args[1], "storage offset")?;
                let shape = self.ints(&args[2], "tensor size")?;
                let stride = self.ints(&args[3], "tensor stride")?;
                if shape.len() != stride.len() {
                    return Err(self.invalid(format!(
                        "tensor size {shape:?} and stride {stride:?} have different lengths"
                    )));
                }
                Ok(Value::Tensor(Rc::new(TensorRef {
                    storage_key: st.key.clone(),
                    dtype: st.dtype,
                    storage_numel: st.numel,
                    offset,
                    shape,
                    stride,
                })))
            }
            Global::RebuildParameter => match args {
                [t @ Value::Tensor(_), _requires_grad, _hooks] => Ok(t.clone()),
                _ => Err(self.invalid("_rebuild_parameter expects (tensor, requires_grad, hooks)")),
            },
            Global::Storage(_) => Err(self.invalid("storage classes cannot be called")),
        }
    }

    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            self.op_pos = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(
                            self.invalid(format!("pickle protocol {proto} is not supported"))
                        );
                    }
                }
                0x95 => {
                    // FRAME: only a hint for buffered readers; the frame must fit.
                    let n = self.len_u64()?;
                    if n > self.data.len() - self.pos {
                        return Err(PickleError::Truncated(self.data.len()));
                    }
                }
                b'.' => {
                    let v = self.pop()?;
                    if !self.stack.is_empty() || !self.marks.is_empty() {
                        return Err(self.invalid("values left on the stack at STOP"));
                    }
                    return Ok(v);
                }
                b'(' => {
                    if self.marks.len() >= MAX_STACK {
                        return Err(PickleError::Limit(format!("more than {MAX_STACK} marks")));
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top_mut()?.clone();
                    self.push(v)?;
                }
                b'N' => self.push(Value::None)?,
                0x88 | 0x89 => self.push(Value::Bool)?,
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.push(Value::Int(v.into()))?
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()))?
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.push(Value::Int(v.into()))?
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        usize::from(self.u8()?)
                    } else {
                        self.len_u32()?
                    };
                    if n > 8 {
                        return Err(self.invalid(format!("integer of {n} bytes is too large")));
                    }
                    let bytes = self.take(n)?;
                    let mut buf = [0u8; 8];
                    buf[..n].copy_from_slice(bytes);
                    // Sign-extend two's complement little-endian.
                    if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
                        buf[n..].fill(0xff);
                    }
                    self.push(Value::Int(i64::from_le_bytes(buf)))?
                }
                b'G' => {
                    self.take(8)?;
                    self.push(Value::Float)?
                }
                b'X' => {
                    let n = self.len_u32()?;
                    let v = self.utf8(n)?;
                    self.push(v)?
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    let v = self.utf8(n)?;
                    self.push(v)?
                }
                0x8d => {
                    let n = self.len_u64()?;
                    let v = self.utf8(n)?;
                    self.push(v)?
                }
                b'C' | b'B' | 0x8e => {
                    let n = match op {
                        b'C' => usize::from(self.u8()?),
                        b'B' => self.len_u32()?,
                        _ => self.len_u64()?,
                    };
                    self.take(n)?;
                    self.push(Value::Bytes)?
                }
                b')' => {
                    let v = self.tuple(Vec::new())?;
                    self.push(v)?
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let v = self.tuple(items)?;
                    self.push(v)?
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let v = self.tuple(items)?;
                    self.push(v)?
                }
                b']' => self.push(Value::List(Rc::new(Seq {
                    items: Vec::new(),
                    depth: 1,
                })))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    let v = Value::List(Rc::new(self.seq(items)?));
                    self.push(v)?
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?
                }
                b'}' => self.push(Value::Dict(Rc::new(Map {
                    items: Vec::new(),
                    depth: 1,
                })))?,
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Dict(Rc::new(Map {
                        items: Vec::new(),
                        depth: 1,
                    })))?;
                    self.set_items(items)?
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?
                }
                b'q' => {
                    let k = self.u8()?;
                    self.memo_put(k.into())?
                }
                b'r' => {
                    let k = u32::from_le_bytes(self.array()?);
                    self.memo_put(k)?
                }
                0x94 => {
                    let k = u32::try_from(self.memo.len())
                        .map_err(|_| PickleError::Limit("memo is full".into()))?;
                    self.memo_put(k)?
                }
                b'h' => {
                    let k = self.u8()?;
                    self.memo_get(k.into())?
                }
                b'j' => {
                    let k = u32::from_le_bytes(self.array()?);
                    self.memo_get(k)?
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let v = self.global(module, name)?;
                    self.push(v)?
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (&module, &name) else {
                        return Err(self.invalid("STACK_GLOBAL needs two strings"));
                    };
                    let v = self.global(module, name)?;
                    self.push(v)?
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.push(v)?
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.push(v)?
                }
                b'b' => {
                    // BUILD: an OrderedDict state dict carries `_metadata` as instance
                    // state; it is not needed, so it is dropped. Nothing else may be built.
                    let _state = self.pop()?;
                    let target = self.top_mut()?;
                    if !matches!(target, Value::Dict(_)) {
                        let kind = target.kind();
                        return Err(self.invalid(format!("BUILD on a {kind} is not supported")));
                    }
                }
                _ => {
                    return Err(PickleError::UnsupportedOpcode {
                        op,
                        name: opcode_name(op),
                        pos: self.op_pos,
                    })
                }
            }
        }
    }
}

/// Parses the `data.pkl` of a `torch.save` file holding a dict (or `OrderedDict`) of
/// tensors and returns its entries in file order.
///
/// Nothing in the pickle is executed; only the structure of a state dict is accepted.
/// Every other global or opcode is rejected with an error naming it.
pub fn parse_state_dict(data: &[u8]) -> Result<Vec<(String, TensorRef)>, PickleError> {
    let mut m = Machine {
        data,
        pos: 0,
        op_pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        copy_work: 0,
    };
    let top = m.run()?;
    let end = m.pos;
    let invalid = |msg: String| PickleError::Invalid { pos: end, msg };
    let Value::Dict(map) = top else {
        return Err(invalid(format!(
            "the pickle holds a {}, expected a dict of tensors",
            top.kind()
        )));
    };
    let mut out: Vec<(String, TensorRef)> = Vec::with_capacity(map.items.len());
    let mut seen = std::collections::HashSet::with_capacity(map.items.len());
    for (k, v) in &map.items {
        let Value::Str(name) = k else {
            return Err(invalid(format!(
                "a state dict key is a {}, expected a str",
                k.kind()
            )));
        };
        let Value::Tensor(t) = v else {
            return Err(invalid(format!(
                "entry '{}' is a {}, expected a tensor",
                shown(name),
                v.kind()
            )));
        };
        if !seen.insert(name.clone()) {
            return Err(invalid(format!("tensor '{}' appears twice", shown(name))));
        }
        out.push((name.to_string(), (**t).clone()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Protocol-2 pickle of `{"w": tensor}` as torch.save writes it (bf16, shape [2, 3]).
    fn proto2() -> Vec<u8> {
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
        p.extend(b"X\x01\x00\x00\x00w");
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\nq\x01");
        p.extend(b"((X\x07\x00\x00\x00storage");
        p.extend(b"ctorch\nBFloat16Storage\n");
        p.extend(b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQ");
        p.extend(b"K\x00K\x02K\x03\x86K\x03K\x01\x86\x89");
        p.extend(b"ccollections\nOrderedDict\n)R");
        p.extend(b"tR");
        p.extend(b"u.");
        p
    }

    #[test]
    fn reads_protocol2_state_dict() {
        let t = parse_state_dict(&proto2()).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].0, "w");
        assert_eq!(
            t[0].1,
            TensorRef {
                storage_key: "0".into(),
                dtype: DType::BF16,
                storage_numel: 6,
                offset: 0,
                shape: vec![2, 3],
                stride: vec![3, 1],
            }
        );
    }

    #[test]
    fn reads_protocol4_with_ordered_dict_parameter_and_metadata() {
        // OrderedDict() REDUCE at top, STACK_GLOBAL, MEMOIZE, SHORT_BINUNICODE, FRAME,
        // _rebuild_parameter wrapping the tensor, LONG1 numel, BUILD with _metadata state.
        let mut body = Vec::new();
        let su = |b: &mut Vec<u8>, s: &str| {
            b.push(0x8c);
            b.push(s.len() as u8);
            b.extend(s.as_bytes());
            b.push(0x94);
        };
        su(&mut body, "collections");
        su(&mut body, "OrderedDict");
        body.extend([0x93, 0x94, b')', b'R', 0x94, b'(']);
        su(&mut body, "layer.weight");
        su(&mut body, "torch._utils");
        su(&mut body, "_rebuild_parameter");
        body.extend([0x93, 0x94]);
        su(&mut body, "torch._utils");
        su(&mut body, "_rebuild_tensor_v2");
        body.extend([0x93, 0x94, b'(', b'(']);
        su(&mut body, "storage");
        su(&mut body, "torch");
        su(&mut body, "HalfStorage");
        body.extend([0x93, 0x94]);
        su(&mut body, "7");
        su(&mut body, "cuda:0");
        body.extend([0x8a, 2, 0x10, 0x27]); // LONG1 10000
        body.extend([
            b't', 0x94, b'Q', b'K', 4, b'K', 2, 0x85, b'K', 1, 0x85, 0x89,
        ]);
        body.extend([
            b'h', 2, b')', b'R', b't', b'R', 0x88, b'}', 0x87, b'R', b'u',
        ]);
        // BUILD with {"_metadata": {}} as state.
        body.extend([b'}', b'(']);
        su(&mut body, "_metadata");
        body.extend([b'}', b'u', b'b', b'.']);
        let mut p = vec![0x80, 4, 0x95];
        p.extend((body.len() as u64).to_le_bytes());
        p.extend(body);
        let t = parse_state_dict(&p).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].0, "layer.weight");
        let r = &t[0].1;
        assert_eq!((r.dtype, r.storage_numel, r.offset), (DType::F16, 10000, 4));
        assert_eq!(
            (r.shape.as_slice(), r.stride.as_slice()),
            (&[2][..], &[1][..])
        );
    }

    #[test]
    fn forbidden_global_is_named_and_not_run() {
        let e = parse_state_dict(b"cos\nsystem\n(S'echo hi'\ntR.").unwrap_err();
        assert_eq!(e, PickleError::ForbiddenGlobal("os.system".into()));
        assert!(e.to_string().contains("'os.system' is not allowed"));
        let e = parse_state_dict(b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.").unwrap_err();
        assert!(e.to_string().contains("builtins.eval"), "{e}");
    }

    #[test]
    fn unsupported_opcodes_are_named() {
        let e = parse_state_dict(b"\x80\x02}(X\x01\x00\x00\x00aI1\nu.").unwrap_err();
        assert!(
            matches!(
                e,
                PickleError::UnsupportedOpcode {
                    op: b'I',
                    name: "INT",
                    ..
                }
            ),
            "{e}"
        );
        let e = parse_state_dict(b"\x80\x02}\x81.").unwrap_err();
        assert!(e.to_string().contains("NEWOBJ"), "{e}");
    }

    #[test]
    fn rejects_non_tensor_entries_and_bad_shapes() {
        let e = parse_state_dict(b"\x80\x02}X\x01\x00\x00\x00aK\x01s.").unwrap_err();
        assert!(e.to_string().contains("entry 'a' is a int"), "{e}");
        let e = parse_state_dict(b"\x80\x02]q\x00.").unwrap_err();
        assert!(e.to_string().contains("expected a dict"), "{e}");
        // Negative size.
        let p = proto2();
        let i = p.windows(5).position(|w| w == b"K\x02K\x03\x86").unwrap();
        let mut bad = p.clone();
        bad.splice(i..i + 2, b"J\xff\xff\xff\xff".iter().copied());
        let e = parse_state_dict(&bad).unwrap_err();
        assert!(e.to_string().contains("negative"), "{e}");
    }

    #[test]
    fn truncations_and_hostile_lengths_are_errors() {
        let p = proto2();
        for n in 0..p.len() {
            assert!(parse_state_dict(&p[..n]).is_err(), "prefix {n}");
        }
        // A 4 GiB string length must not allocate.
        assert_eq!(
            parse_state_dict(b"\x80\x02X\xff\xff\xff\xff"),
            Err(PickleError::Truncated(7))
        );
        assert!(parse_state_dict(b"\x8d\xff\xff\xff\xff\xff\xff\xff\xff").is_err());
        assert!(parse_state_dict(b"\x95\xff\xff\xff\xff\xff\xff\xff\xff").is_err());
    }

    #[test]
    fn deep_nesting_and_memo_blowup_are_bounded() {
        // 100k nested empty tuples via TUPLE1.
        let mut p = vec![b')'];
        p.extend(std::iter::repeat_n(0x85u8, 100_000));
        p.push(b'.');
        assert!(matches!(parse_state_dict(&p), Err(PickleError::Limit(_))));
        // Doubling through the memo: cheap thanks to sharing, then depth-limited.
        let mut p = vec![b')', b'q', 0];
        for _ in 0..200 {
            p.extend([b'0', b'h', 0, b'h', 0, 0x86, b'q', 0]);
        }
        p.push(b'.');
        assert!(matches!(parse_state_dict(&p), Err(PickleError::Limit(_))));
        // Many marks / stack pushes.
        let p = vec![b'('; 2 << 20];
        assert!(matches!(parse_state_dict(&p), Err(PickleError::Limit(_))));
    }

    #[test]
    fn stack_underflow_and_mark_misuse_are_errors() {
        for p in [
            &b"."[..],
            b"t.",
            b"(.",
            b"(K\x01u.",
            b"K\x01K\x01s.",
            b"R.",
            b"h\x05.",
            b"Q.",
        ] {
            assert!(parse_state_dict(p).is_err(), "{p:?}");
        }
    }
}
