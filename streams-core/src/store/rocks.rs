//! RocksDB options: bounded memory by default, shared by every store of an application
//! instance, and a hook for users' own settings.

use std::sync::Arc;

use rocksdb::{BlockBasedOptions, Cache, Options, WriteBufferManager};

/// Lets users change the options of each RocksDB store (called with the store's name).
pub type RocksConfigSetter = Arc<dyn Fn(&str, &mut Options) + Send + Sync>;

/// Memory limits shared by all RocksDB stores of an instance.
#[derive(Clone)]
pub struct RocksResources {
    cache: Cache,
    write_buffers: WriteBufferManager,
    setter: Option<RocksConfigSetter>,
}

impl RocksResources {
    /// A block cache of `block_cache_bytes` and a memtable limit of `write_buffer_bytes`
    /// (counted against the cache), shared by all stores.
    pub fn new(
        block_cache_bytes: usize,
        write_buffer_bytes: usize,
        setter: Option<RocksConfigSetter>,
    ) -> Self {
        let cache = Cache::new_lru_cache(block_cache_bytes);
        let write_buffers = WriteBufferManager::new_write_buffer_manager_with_cache(
            write_buffer_bytes,
            false,
            cache.clone(),
        );
        RocksResources {
            cache,
            write_buffers,
            setter,
        }
    }

    /// The options of store `name`.
    pub fn options(&self, name: &str) -> Options {
        let mut opts = Options::default();
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&self.cache);
        table.set_cache_index_and_filter_blocks(true);
        // A bloom filter per table file, as Kafka Streams sets: a lookup of a key the store
        // does not hold (the first update of every new key or window) skips the files
        // without reading their blocks.
        table.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&table);
        opts.set_write_buffer_manager(&self.write_buffers);
        opts.set_write_buffer_size(8 << 20);
        opts.set_max_write_buffer_number(2);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        if let Some(set) = &self.setter {
            set(name, &mut opts);
        }
        opts
    }
}

impl Default for RocksResources {
    /// 64 MiB of block cache, 32 MiB of memtables.
    fn default() -> Self {
        RocksResources::new(64 << 20, 32 << 20, None)
    }
}
