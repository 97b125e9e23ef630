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
    cache_capacity: usize,
    write_buffers: WriteBufferManager,
    setter: Option<RocksConfigSetter>,
}

/// What the shared RocksDB block cache and memtables use, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RocksUsage {
    /// Bytes in the block cache, the memtables' charge included (they are counted against it).
    pub block_cache_usage: usize,
    /// The block cache's capacity: the budget of the whole.
    pub block_cache_capacity: usize,
    /// Bytes of the memtables.
    pub memtable_usage: usize,
    /// The memtables' limit.
    pub memtable_limit: usize,
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
            cache_capacity: block_cache_bytes,
            write_buffers,
            setter,
        }
    }

    /// What the block cache and the memtables use now.
    pub fn usage(&self) -> RocksUsage {
        RocksUsage {
            block_cache_usage: self.cache.get_usage(),
            block_cache_capacity: self.cache_capacity,
            memtable_usage: self.write_buffers.get_usage(),
            memtable_limit: self.write_buffers.get_buffer_size(),
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
