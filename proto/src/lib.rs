//! Protobuf messages and tonic service code of ktrail's gRPC API, generated at build time from
//! `proto/ktrail/v1/*.proto`.

/// `ktrail.v1`: native ingest.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("ktrail.v1");
}
