//! The codec every generated client and server uses: prost's, except that a request that does
//! not decode is refused with INVALID_ARGUMENT (the caller sent bad bytes) instead of tonic's
//! INTERNAL, which tells a caller the server failed and invites it to retry the same bytes.

use tonic::codec::{Codec, DecodeBuf, Decoder, ProstCodec};
use tonic::Status;

pub struct SluiceCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for SluiceCodec<T, U> {
    fn default() -> Self {
        SluiceCodec(ProstCodec::default())
    }
}

impl<T, U> Codec for SluiceCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(self.0.decoder())
    }
}

pub struct RequestDecoder<U>(<ProstCodec<(), U> as Codec>::Decoder)
where
    U: prost::Message + Default + Send + 'static;

impl<U> Decoder for RequestDecoder<U>
where
    U: prost::Message + Default + Send + 'static,
{
    type Item = U;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(src).map_err(|status| {
            // The same codec decodes the answers a client receives; a malformed answer is the
            // server's fault and stays INTERNAL. Every message a Sluice RPC takes is named
            // `*Request`, but for the Raft transport's.
            let name = std::any::type_name::<U>().rsplit("::").next().unwrap_or("");
            if status.code() == tonic::Code::Internal
                && (name.ends_with("Request") || name == "RaftMessage")
            {
                Status::invalid_argument(format!(
                    "the request is not a valid {name}: {}",
                    status.message()
                ))
            } else {
                status
            }
        })
    }

    fn buffer_settings(&self) -> tonic::codec::BufferSettings {
        self.0.buffer_settings()
    }
}
