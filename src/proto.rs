//! The Hubble API: messages and services generated from `proto/`, plus codecs that move
//! `GetFlowsResponse` messages as raw bytes.
//!
//! The generated `observer_client`/`observer_server` decode and encode every message into
//! structs. The hot path does better with [`raw`]: its client hands each response to
//! [`crate::flow::wire`] undecoded, and its server streams responses encoded ahead of time,
//! which the demo, the tests and the benchmarks use.

#![allow(clippy::all, missing_docs, missing_debug_implementations)]

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

pub mod flow {
    tonic::include_proto!("flow");
}

pub mod relay {
    tonic::include_proto!("relay");
}

pub mod observer {
    tonic::include_proto!("observer");
}

/// `observer.Observer` with `GetFlows` responses as raw bytes.
///
/// `observer_client::ObserverClient::get_flows` yields each response's undecoded bytes;
/// `observer_server::ObserverServer` streams bytes already encoded as `GetFlowsResponse`.
pub mod raw {
    include!(concat!(env!("OUT_DIR"), "/raw_client/observer.Observer.rs"));
    include!(concat!(env!("OUT_DIR"), "/raw_server/observer.Observer.rs"));
}

/// Client codec: requests encoded with prost, responses left as bytes.
#[derive(Debug, Clone, Copy)]
pub struct RawResponses<Req>(PhantomData<Req>);

impl<Req> Default for RawResponses<Req> {
    fn default() -> Self {
        RawResponses(PhantomData)
    }
}

impl<Req: prost::Message + Send + 'static> Codec for RawResponses<Req> {
    type Encode = Req;
    type Decode = Bytes;
    type Encoder = ProstEncoder<Req>;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesDecoder
    }
}

/// Server codec: requests decoded with prost, responses sent as the given bytes.
#[derive(Debug, Clone, Copy)]
pub struct PreEncoded<Req>(PhantomData<Req>);

impl<Req> Default for PreEncoded<Req> {
    fn default() -> Self {
        PreEncoded(PhantomData)
    }
}

impl<Req: prost::Message + Default + Send + 'static> Codec for PreEncoded<Req> {
    type Encode = Bytes;
    type Decode = Req;
    type Encoder = BytesEncoder;
    type Decoder = ProstDecoder<Req>;

    fn encoder(&mut self) -> Self::Encoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

/// Hands out a message's bytes without copying them out of tonic's buffer.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesDecoder;

impl Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let len = src.remaining();
        Ok(Some(src.copy_to_bytes(len)))
    }
}

/// Writes bytes that already are an encoded message.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}
