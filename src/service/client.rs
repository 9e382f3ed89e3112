//! A blocking-friendly client of the marklens API, used by the CLI's `--server`
//! mode and the load benchmark. It returns the library's own types, so a remote
//! search prints exactly like a local one.

use std::collections::HashMap;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::convert;
use super::pb::{self, matcher_client::MatcherClient, registry_client::RegistryClient};
use crate::engine::{SearchOptions, SearchResult};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("{}: {}", convert::code_name(.0.code()), .0.message())]
    Rpc(#[from] Status),
}

/// A connection to a marklens server.
#[derive(Debug, Clone)]
pub struct Client {
    matcher: MatcherClient<Channel>,
    registry: RegistryClient<Channel>,
}

impl Client {
    /// Connects to `url` (e.g. `http://127.0.0.1:50051`).
    pub async fn connect(url: &str, max_message_bytes: usize) -> Result<Client, ClientError> {
        let connect_err = |source| ClientError::Connect {
            url: url.to_owned(),
            source,
        };
        let channel = Endpoint::from_shared(url.to_owned())
            .map_err(connect_err)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(connect_err)?;
        Ok(Client {
            matcher: MatcherClient::new(channel.clone())
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
            registry: RegistryClient::new(channel)
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
        })
    }

    /// Searches one photo.
    pub async fn search(
        &mut self,
        image: Vec<u8>,
        options: &SearchOptions,
    ) -> Result<SearchResult, ClientError> {
        let request = pb::SearchRequest {
            image,
            ..convert::options_to_proto(options)
        };
        let reply = self.matcher.search(request).await?.into_inner();
        Ok(convert::result_from_proto(reply)?)
    }

    /// Searches many photos over one stream; one result per photo, in order.
    pub async fn search_many(
        &mut self,
        images: Vec<Vec<u8>>,
        options: &SearchOptions,
    ) -> Result<Vec<Result<SearchResult, Status>>, ClientError> {
        let count = images.len();
        let template = convert::options_to_proto(options);
        let requests = images
            .into_iter()
            .enumerate()
            .map(move |(i, image)| pb::SearchRequest {
                request_id: i.to_string(),
                image,
                ..template.clone()
            });
        let mut replies = self
            .matcher
            .search_stream(tokio_stream::iter(requests))
            .await?
            .into_inner();
        let mut by_id: HashMap<usize, Result<SearchResult, Status>> = HashMap::new();
        while let Some(reply) = replies.message().await? {
            let Ok(index) = reply.request_id.parse::<usize>() else {
                continue;
            };
            by_id.insert(index, convert::result_from_proto(reply));
        }
        Ok((0..count)
            .map(|i| {
                by_id
                    .remove(&i)
                    .unwrap_or_else(|| Err(Status::new(Code::Unknown, "no reply from the server")))
            })
            .collect())
    }

    /// A recorded mark's source image.
    pub async fn mark_image(&mut self, id: &str) -> Result<Vec<u8>, ClientError> {
        let mark = self
            .registry
            .get_mark(pb::GetMarkRequest {
                id: id.to_owned(),
                include_image: true,
            })
            .await?
            .into_inner();
        Ok(mark.image)
    }
}
