//! Transport compression, as Discord does it (`compress=` in the connect URL).
//!
//! Both modes keep one compression context for the whole connection, so later messages
//! reuse the history of earlier ones (that is where the ratio comes from), and flush it
//! after every message, so each binary frame decodes as soon as it arrives:
//!
//! - `zlib-stream`: one zlib stream; each message is deflated and flushed with
//!   `Z_SYNC_FLUSH`, so it ends with `00 00 ff ff` (the marker clients wait for).
//! - `zstd-stream`: one zstd stream (a single frame that never ends); each message is
//!   flushed with `ZSTD_e_flush`.
//!
//! Frames are binary when compressed; the client's decompressor must never be fed a text
//! frame, so a compressed connection sends nothing uncompressed (HELLO included).

use axum::extract::ws::Message;

/// Compression a client asked for in the connect URL (`compress=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    /// No `compress` parameter, or one the simulator does not know (Discord ignores those).
    None,
    ZlibStream,
    ZstdStream,
}

impl Compression {
    pub(crate) fn from_query(value: Option<&str>) -> Self {
        match value {
            Some("zlib-stream") => Self::ZlibStream,
            Some("zstd-stream") => Self::ZstdStream,
            _ => Self::None,
        }
    }

    /// The value of the `compress` query parameter, or `None`.
    pub fn as_query(self) -> Option<&'static str> {
        match self {
            Self::None => None,
            Self::ZlibStream => Some("zlib-stream"),
            Self::ZstdStream => Some("zstd-stream"),
        }
    }

    /// A fresh compression context for one connection.
    pub(crate) fn encoder(self) -> Encoder {
        match self {
            Self::None => Encoder::None,
            Self::ZlibStream => Encoder::Zlib(Box::new(flate2::Compress::new(
                flate2::Compression::default(),
                // With the zlib header, as Discord sends it (clients inflate with zlib, not raw).
                true,
            ))),
            Self::ZstdStream => Encoder::Zstd(Box::new(zstd_safe::CCtx::create())),
        }
    }
}

/// One connection's compression context.
pub(crate) enum Encoder {
    None,
    Zlib(Box<flate2::Compress>),
    Zstd(Box<zstd_safe::CCtx<'static>>),
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "Encoder::None",
            Self::Zlib(_) => "Encoder::Zlib",
            Self::Zstd(_) => "Encoder::Zstd",
        })
    }
}

impl Encoder {
    /// The websocket message carrying `frame`.
    pub fn encode(&mut self, frame: String) -> Message {
        match self {
            Self::None => Message::Text(frame.into()),
            Self::Zlib(ctx) => Message::Binary(deflate_sync(ctx, frame.as_bytes()).into()),
            Self::Zstd(ctx) => Message::Binary(zstd_flush(ctx, frame.as_bytes()).into()),
        }
    }
}

/// Deflates `input` on the connection's stream and sync-flushes it.
fn deflate_sync(ctx: &mut flate2::Compress, input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    let start = ctx.total_in();
    loop {
        let consumed = (ctx.total_in() - start) as usize;
        // Room for the flush marker even when the input is consumed.
        out.reserve(input.len().saturating_sub(consumed) / 2 + 64);
        ctx.compress_vec(&input[consumed..], &mut out, flate2::FlushCompress::Sync)
            .expect("deflate on an in-memory buffer does not fail");
        // Done once the input is consumed and the flush fitted: zlib leaves spare
        // output space only when it has nothing more to write.
        if (ctx.total_in() - start) as usize == input.len() && out.len() < out.capacity() {
            return out;
        }
    }
}

/// Compresses `input` on the connection's zstd stream and flushes it.
fn zstd_flush(ctx: &mut zstd_safe::CCtx<'static>, input: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(input.len() / 2 + 64);
    let mut source = zstd_safe::InBuffer::around(input);
    loop {
        out.reserve(zstd_safe::CCtx::out_size().min(input.len() + 64));
        let len = out.len();
        // Appends after what is already written; the Vec's length follows the output.
        let mut sink = zstd_safe::OutBuffer::around_pos(&mut out, len);
        let remaining = ctx
            .compress_stream2(
                &mut sink,
                &mut source,
                zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_flush,
            )
            .expect("zstd on an in-memory buffer does not fail");
        // 0: everything is consumed and flushed.
        if remaining == 0 && source.pos() == input.len() {
            return out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zstd::stream::raw::Operation;

    /// Realistic frames: repeated structure (what the shared context is for) and
    /// non-ASCII text.
    fn frames() -> Vec<String> {
        (1..=50)
            .map(|seq| {
                format!(
                    r#"{{"op":0,"t":"MESSAGE_CREATE","s":{seq},"d":{{"id":"{}","content":"héllo 👋 {seq}","channel_id":"41771983429993937"}}}}"#,
                    1_000_000 + seq
                )
            })
            .collect()
    }

    fn binary(message: Message) -> Vec<u8> {
        match message {
            Message::Binary(bytes) => bytes.to_vec(),
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }

    #[test]
    fn uncompressed_frames_are_text() {
        let mut encoder = Compression::None.encoder();
        assert_eq!(
            encoder.encode("{}".to_owned()),
            Message::Text("{}".to_owned().into())
        );
    }

    #[test]
    fn query_values_round_trip() {
        for c in [Compression::ZlibStream, Compression::ZstdStream] {
            assert_eq!(Compression::from_query(c.as_query()), c);
        }
        assert_eq!(Compression::from_query(None), Compression::None);
        assert_eq!(Compression::from_query(Some("gzip")), Compression::None);
    }

    /// Decoded the way a client does: one inflate stream for the connection, each message
    /// inflated on arrival with a sync flush.
    #[test]
    fn zlib_stream_messages_decode_one_by_one_on_one_context() {
        let mut encoder = Compression::ZlibStream.encoder();
        let mut inflate = flate2::Decompress::new(true);
        let mut sizes = Vec::new();
        for frame in frames() {
            let message = binary(encoder.encode(frame.clone()));
            assert!(
                message.ends_with(&[0, 0, 0xff, 0xff]),
                "Z_SYNC_FLUSH marker"
            );
            sizes.push(message.len());
            let mut out = Vec::with_capacity(frame.len() + 16);
            let before = inflate.total_in();
            inflate
                .decompress_vec(&message, &mut out, flate2::FlushDecompress::Sync)
                .unwrap();
            assert_eq!((inflate.total_in() - before) as usize, message.len());
            assert_eq!(String::from_utf8(out).unwrap(), frame);
        }
        // Only the first message carries the zlib header; later ones reuse the history.
        assert!(sizes[1..].iter().all(|&s| s < sizes[0] / 2), "{sizes:?}");
    }

    #[test]
    fn zstd_stream_messages_decode_one_by_one_on_one_context() {
        let mut encoder = Compression::ZstdStream.encoder();
        let mut decoder = zstd::stream::raw::Decoder::new().unwrap();
        let mut sizes = Vec::new();
        for frame in frames() {
            let message = binary(encoder.encode(frame.clone()));
            sizes.push(message.len());
            let mut out = vec![0; frame.len() + 1024];
            let status = decoder.run_on_buffers(&message, &mut out).unwrap();
            assert_eq!(status.bytes_read, message.len());
            out.truncate(status.bytes_written);
            assert_eq!(String::from_utf8(out).unwrap(), frame);
            // The stream is one endless frame: a flush never ends it.
            assert_ne!(status.remaining, 0);
        }
        assert!(sizes[1..].iter().all(|&s| s < sizes[0] / 2), "{sizes:?}");
    }

    #[test]
    fn large_frames_survive_both_encoders() {
        // Bigger than zstd's output block and than any reserve step above.
        let frame = format!(
            r#"{{"op":0,"d":"{}"}}"#,
            (0..400_000u32)
                .map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26))
                .collect::<String>()
        );
        let zlib = binary(Compression::ZlibStream.encoder().encode(frame.clone()));
        let mut inflate = flate2::Decompress::new(true);
        let mut out = Vec::with_capacity(frame.len() + 16);
        inflate
            .decompress_vec(&zlib, &mut out, flate2::FlushDecompress::Sync)
            .unwrap();
        assert_eq!(out, frame.as_bytes());

        let zstd = binary(Compression::ZstdStream.encoder().encode(frame.clone()));
        let mut out = vec![0; frame.len() + 1024];
        let status = zstd::stream::raw::Decoder::new()
            .unwrap()
            .run_on_buffers(&zstd, &mut out)
            .unwrap();
        assert_eq!(status.bytes_read, zstd.len());
        assert_eq!(&out[..status.bytes_written], frame.as_bytes());
    }
}
