//! One upload of one file to an [`ArtifactStore`] with its sha256 and content type, streamed
//! (a checkpoint of many GiB is never held in memory) and retried. The file comes already
//! open (the monitor opens it beneath the run directory): nothing here opens a path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{Attribute, Attributes, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::ArtifactStore;

/// Files up to this size go up in one PUT; larger ones as a multipart upload.
const SINGLE_PUT_BYTES: usize = 8 * 1024 * 1024;

/// Parts of a multipart upload (S3 wants at least 5 MiB for all but the last).
const PART_BYTES: usize = 8 * 1024 * 1024;

/// Parts of one file in flight at once: with `MAX_UPLOADS` files, at most 32 MiB buffered
/// per file.
const PARTS_IN_FLIGHT: usize = 2;

const READ_BYTES: usize = 1024 * 1024;

/// Tries per upload, and the pauses between them. object_store's S3 client retries
/// transient HTTP errors inside each try as well.
const ATTEMPTS: usize = 3;
const BACKOFF: [Duration; ATTEMPTS - 1] = [Duration::from_millis(500), Duration::from_secs(2)];

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot store {key} in {location}: {source}")]
    Store { key: String, location: String, source: object_store::Error },
}

/// One stored version of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub bytes: u64,
    /// Lower-case hex of the SHA-256 of exactly the bytes stored.
    pub sha256: String,
}

impl ArtifactStore {
    /// Uploads the open `file` (named `shown` in messages) to `key` from its start, trying
    /// up to three times.
    ///
    /// # Errors
    /// The last try's.
    pub async fn upload(
        &self,
        file: std::fs::File,
        shown: &Path,
        key: &ObjectPath,
        content_type: &str,
    ) -> Result<Uploaded, UploadError> {
        let mut reader = tokio::fs::File::from_std(file);
        let mut attempt = 0;
        loop {
            match self.upload_once(&mut reader, shown, key, content_type).await {
                Ok(uploaded) => return Ok(uploaded),
                Err(err) if attempt + 1 >= ATTEMPTS => return Err(err),
                Err(err) => {
                    tracing::debug!(file = %shown.display(), error = %err, "artifact upload failed; trying again");
                    tokio::time::sleep(BACKOFF[attempt]).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn upload_once(
        &self,
        reader: &mut tokio::fs::File,
        shown: &Path,
        key: &ObjectPath,
        content_type: &str,
    ) -> Result<Uploaded, UploadError> {
        let read_error = |source| UploadError::Read { path: shown.to_owned(), source };
        let store_error = |source| UploadError::Store { key: key.to_string(), location: self.location.clone(), source };
        reader.rewind().await.map_err(read_error)?;
        let mut hasher = Sha256::new();
        let mut attributes = Attributes::new();
        if self.content_types {
            attributes.insert(Attribute::ContentType, content_type.to_owned().into());
        }

        // The first part decides: a small file goes up in one PUT.
        let mut first = Vec::with_capacity(SINGLE_PUT_BYTES.min(READ_BYTES));
        let ended = read_up_to(reader, &mut first, SINGLE_PUT_BYTES).await.map_err(read_error)?;
        hasher.update(&first);
        if ended {
            let bytes = first.len() as u64;
            let options = PutOptions { attributes, ..PutOptions::default() };
            self.store.put_opts(key, PutPayload::from(first), options).await.map_err(store_error)?;
            return Ok(Uploaded { bytes, sha256: hex(&hasher.finalize()) });
        }

        let options = PutMultipartOptions { attributes, ..PutMultipartOptions::default() };
        let upload = self.store.put_multipart_opts(key, options).await.map_err(store_error)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut bytes = first.len() as u64;
        writer.write(&first);
        drop(first);
        let mut buffer = vec![0u8; READ_BYTES];
        let streamed: Result<(), UploadError> = async {
            loop {
                let read = reader.read(&mut buffer).await.map_err(read_error)?;
                if read == 0 {
                    return Ok(());
                }
                hasher.update(&buffer[..read]);
                bytes += read as u64;
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(store_error)?;
                writer.write(&buffer[..read]);
            }
        }
        .await;
        if let Err(err) = streamed {
            // Best effort: S3 also expires abandoned uploads by lifecycle rule.
            let _ = writer.abort().await;
            return Err(err);
        }
        writer.finish().await.map_err(store_error)?;
        Ok(Uploaded { bytes, sha256: hex(&hasher.finalize()) })
    }
}

/// Reads into `buffer` until it holds `limit` bytes or the file ends; true when it ended.
async fn read_up_to(reader: &mut tokio::fs::File, buffer: &mut Vec<u8>, limit: usize) -> std::io::Result<bool> {
    let mut chunk = vec![0u8; READ_BYTES];
    while buffer.len() < limit {
        let want = (limit - buffer.len()).min(READ_BYTES);
        let read = reader.read(&mut chunk[..want]).await?;
        if read == 0 {
            return Ok(true);
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    // Exactly `limit` bytes may also be the whole file: look one byte further.
    let read = reader.read(&mut chunk[..1]).await?;
    buffer.extend_from_slice(&chunk[..read]);
    Ok(read == 0)
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(DIGITS[usize::from(byte >> 4)] as char);
        text.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    text
}

/// The SHA-256 of a whole file, in lower-case hex (blocking; for tests and tools).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; READ_BYTES];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(hex(&hasher.finalize()));
        }
        hasher.update(&buffer[..read]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::RunId;
    use object_store::ObjectStoreExt;

    fn run_id() -> RunId {
        "run-1".parse().expect("valid run id")
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
        assert_eq!(hex(&Sha256::digest(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    /// Sizes around the single-PUT limit take both paths; what is stored is what was read.
    #[tokio::test]
    async fn small_and_large_files_are_stored_whole_with_their_sha256() {
        let dir = tempfile::tempdir().expect("temp dir");
        let artifacts = ArtifactStore::local(&dir.path().join("artifacts")).expect("local store");
        for size in [0, 1, SINGLE_PUT_BYTES, SINGLE_PUT_BYTES + 1, 2 * PART_BYTES + 12345] {
            let content: Vec<u8> = (0..size).map(|index| (index % 251) as u8).collect();
            let file = dir.path().join(format!("model-{size}.pt"));
            std::fs::write(&file, &content).expect("write");
            let key = artifacts.key(&run_id(), Path::new(&format!("model-{size}.pt")));
            let open = std::fs::File::open(&file).expect("open");
            let uploaded = artifacts.upload(open, &file, &key, "application/octet-stream").await.expect("upload");
            assert_eq!(uploaded.bytes, size as u64);
            assert_eq!(uploaded.sha256, hex(&Sha256::digest(&content)), "size {size}");
            let stored = artifacts.object_store().get(&key).await.expect("get").bytes().await.expect("bytes");
            assert_eq!(stored.len(), size, "size {size}");
            assert!(stored.as_ref() == content.as_slice(), "size {size}: stored bytes differ");
        }
    }
}
