//! G.711 μ-law and A-law, the 8-bit companded audio of telephony (Twilio Media Streams, and the
//! `audio/pcmu` and `audio/pcma` formats of the OpenAI Realtime protocol).
//!
//! The conversions are the ITU-T G.711 reference ones, as in Sun's public-domain `g711.c` (which
//! CPython's `audioop` also uses): μ-law encodes the top 14 bits of a 16-bit sample, A-law the top
//! 13. Decoding goes through a 256-entry table built at compile time; encoding is a few shifts.
//! `fixtures/g711.json` holds `audioop`'s tables, and the tests compare against all of them.

const QUANT_MASK: u8 = 0x0F;
const SEG_SHIFT: u32 = 4;
const SEG_MASK: u8 = 0x70;
const SIGN_BIT: u8 = 0x80;
const ULAW_BIAS: i32 = 0x84;
/// The largest μ-law magnitude, in 14-bit units.
const ULAW_CLIP: i32 = 8159;
const ULAW_SEG_END: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];
const ALAW_SEG_END: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];

/// The segment of `value`: the first whose end is at least `value` (8: beyond the last).
const fn segment(value: i32, ends: &[i32; 8]) -> u32 {
    let mut i = 0;
    while i < 8 {
        if value <= ends[i] {
            return i as u32;
        }
        i += 1;
    }
    8
}

/// One 16-bit sample as μ-law.
pub const fn ulaw_from_linear(sample: i16) -> u8 {
    let mut v = (sample as i32) >> 2;
    let mask: u8 = if v < 0 {
        v = -v;
        0x7F
    } else {
        0xFF
    };
    if v > ULAW_CLIP {
        v = ULAW_CLIP;
    }
    v += ULAW_BIAS >> 2;
    let seg = segment(v, &ULAW_SEG_END);
    if seg >= 8 {
        return 0x7F ^ mask;
    }
    let u = ((seg << 4) as u8) | ((v >> (seg + 1)) as u8 & QUANT_MASK);
    u ^ mask
}

/// One μ-law byte as a 16-bit sample.
pub const fn ulaw_to_linear_exact(byte: u8) -> i16 {
    let u = !byte;
    let mut t = (((u & QUANT_MASK) as i32) << 3) + ULAW_BIAS;
    t <<= ((u & SEG_MASK) >> SEG_SHIFT) as u32;
    (if u & SIGN_BIT != 0 {
        ULAW_BIAS - t
    } else {
        t - ULAW_BIAS
    }) as i16
}

/// One 16-bit sample as A-law.
pub const fn alaw_from_linear(sample: i16) -> u8 {
    let mut v = (sample as i32) >> 3;
    let mask: u8 = if v >= 0 {
        0xD5
    } else {
        v = -v - 1;
        0x55
    };
    let seg = segment(v, &ALAW_SEG_END);
    if seg >= 8 {
        return 0x7F ^ mask;
    }
    let mut a = (seg << SEG_SHIFT) as u8;
    a |= if seg < 2 {
        (v >> 1) as u8 & QUANT_MASK
    } else {
        (v >> seg) as u8 & QUANT_MASK
    };
    a ^ mask
}

/// One A-law byte as a 16-bit sample.
pub const fn alaw_to_linear_exact(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let mut t = ((a & QUANT_MASK) as i32) << 4;
    let seg = ((a & SEG_MASK) >> SEG_SHIFT) as u32;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    (if a & SIGN_BIT != 0 { t } else { -t }) as i16
}

const fn ulaw_table() -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = ulaw_to_linear_exact(i as u8);
        i += 1;
    }
    t
}

const fn alaw_table() -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = alaw_to_linear_exact(i as u8);
        i += 1;
    }
    t
}

static ULAW_TABLE: [i16; 256] = ulaw_table();
static ALAW_TABLE: [i16; 256] = alaw_table();

/// Which G.711 law.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Law {
    /// μ-law (PCMU), North America and Japan; Twilio's.
    Ulaw,
    /// A-law (PCMA), the rest of the world.
    Alaw,
}

impl Law {
    /// Appends the decoded samples of `bytes` to `out`.
    pub fn decode(self, bytes: &[u8], out: &mut Vec<i16>) {
        let table = match self {
            Law::Ulaw => &ULAW_TABLE,
            Law::Alaw => &ALAW_TABLE,
        };
        out.extend(bytes.iter().map(|&b| table[usize::from(b)]));
    }

    /// Appends the encoded bytes of `samples` to `out`.
    pub fn encode(self, samples: &[i16], out: &mut Vec<u8>) {
        match self {
            Law::Ulaw => out.extend(samples.iter().map(|&s| ulaw_from_linear(s))),
            Law::Alaw => out.extend(samples.iter().map(|&s| alaw_from_linear(s))),
        }
    }

    /// The encoding of silence.
    pub fn silence(self) -> u8 {
        match self {
            Law::Ulaw => ulaw_from_linear(0),
            Law::Alaw => alaw_from_linear(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `fixtures/g711.json`: CPython `audioop`'s decode tables, and its encoding of every 16th
    /// sample value from -32768 (then 32767).
    struct Reference {
        ulaw_decode: Vec<i16>,
        alaw_decode: Vec<i16>,
        samples: Vec<i16>,
        ulaw_encode: Vec<u8>,
        alaw_encode: Vec<u8>,
    }

    /// The fixture is flat JSON; the core has no JSON library, and needs none for this.
    fn reference() -> Reference {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/g711.json");
        let text = std::fs::read_to_string(path).expect("fixtures/g711.json");
        let field = |name: &str| -> &str {
            let start = text.find(&format!("\"{name}\": ")).expect(name) + name.len() + 4;
            let rest = &text[start..];
            let end = if rest.starts_with('[') {
                rest.find(']').expect("]") + 1
            } else {
                rest[1..].find('"').expect("\"") + 2
            };
            &rest[..end]
        };
        let numbers = |name: &str| -> Vec<i16> {
            field(name)
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .map(|n| n.trim().parse().expect("a number"))
                .collect()
        };
        let hex = |name: &str| -> Vec<u8> {
            let h = field(name).trim_matches('"');
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex"))
                .collect()
        };
        let mut samples: Vec<i16> = (-32768..32768).step_by(16).map(|s: i32| s as i16).collect();
        samples.push(32767);
        Reference {
            ulaw_decode: numbers("ulaw_decode"),
            alaw_decode: numbers("alaw_decode"),
            samples,
            ulaw_encode: hex("ulaw_encode"),
            alaw_encode: hex("alaw_encode"),
        }
    }

    #[test]
    fn decoding_matches_the_reference_tables() {
        let r = reference();
        let all: Vec<u8> = (0..=255).collect();
        let mut out = Vec::new();
        Law::Ulaw.decode(&all, &mut out);
        assert_eq!(out, r.ulaw_decode);
        out.clear();
        Law::Alaw.decode(&all, &mut out);
        assert_eq!(out, r.alaw_decode);
    }

    #[test]
    fn encoding_matches_the_reference() {
        let r = reference();
        assert_eq!(r.samples.len(), r.ulaw_encode.len());
        let mut out = Vec::new();
        Law::Ulaw.encode(&r.samples, &mut out);
        assert_eq!(out, r.ulaw_encode);
        out.clear();
        Law::Alaw.encode(&r.samples, &mut out);
        assert_eq!(out, r.alaw_encode);
    }

    #[test]
    fn known_values_and_round_trips() {
        // G.711's well-known points: silence, and the extremes.
        assert_eq!(ulaw_from_linear(0), 0xFF);
        assert_eq!(Law::Ulaw.silence(), 0xFF);
        assert_eq!(alaw_from_linear(0), 0xD5);
        assert_eq!(ulaw_to_linear_exact(0x00), -32124);
        assert_eq!(ulaw_to_linear_exact(0x80), 32124);
        assert_eq!(alaw_to_linear_exact(0xAA), 32256);
        assert_eq!(alaw_to_linear_exact(0x2A), -32256);
        // Every code decodes to a value that encodes back to it (μ-law's two zeros aside).
        for b in 0..=255u8 {
            let u = ulaw_to_linear_exact(b);
            if b != 0x7F {
                assert_eq!(ulaw_from_linear(u), b, "μ-law {b:#04x} → {u}");
            }
            assert_eq!(
                alaw_from_linear(alaw_to_linear_exact(b)),
                b,
                "A-law {b:#04x}"
            );
        }
    }
}
