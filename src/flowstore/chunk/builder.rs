//! The open chunk: rows appended into per-column vectors, strings and addresses coded through
//! dictionaries, frozen a row group at a time so a query's snapshot shares what is full.

use super::*;

/// Values and their codes; code 0 is `K::default()`.
#[derive(Debug, Clone)]
pub struct Dict<K> {
    codes: HashMap<K, u32, foldhash::fast::RandomState>,
    pub values: Vec<K>,
}

impl<K: Hash + Eq + Clone + Default> Default for Dict<K> {
    fn default() -> Self {
        let mut d = Dict {
            codes: HashMap::default(),
            values: Vec::new(),
        };
        d.code(&K::default());
        d
    }
}

impl<K: Hash + Eq + Clone + Default> Dict<K> {
    pub fn code(&mut self, value: &K) -> u32 {
        if let Some(&c) = self.codes.get(value) {
            return c;
        }
        let c = u32::try_from(self.values.len()).unwrap_or(u32::MAX);
        self.values.push(value.clone());
        self.codes.insert(value.clone(), c);
        c
    }
}

/// Rows being gathered before they become a [`Chunk`], a block at a time: a full block
/// becomes polars arrays, which a query's [`Builder::snapshot`] shares instead of copying.
/// A snapshot copies at most the open block (a quarter chunk, 2.4 MB of Cilium-shaped
/// flows by default); copying the whole open chunk, as every query did under load, held up
/// to 12 MB at each ask. The sealed chunk has one array a column again.
#[derive(Debug)]
pub struct Builder {
    /// Rows a chunk is built for: what [`Builder::bytes`] counts.
    rows: usize,
    /// Rows a block holds.
    block: usize,
    /// The full blocks, one polars array each per column.
    frozen: DataFrame,
    first_time: Option<i64>,
    /// The open block.
    seq: Vec<u64>,
    time: Vec<i64>,
    /// Each flow's UUID as its two halves, the columns they become.
    uuid: [Vec<u64>; 2],
    columns: Vec<Vec<u32>>,
    texts: Dict<Sym>,
    ips: Dict<Option<IpAddr>>,
    /// Text codes of label sets by the address of the decoder's shared list (which the entry
    /// keeps alive, so no other list can take its address): joined once per distinct set.
    label_sets: FastMap<usize, (SymList, u32)>,
}

impl Builder {
    /// A builder of chunks of `rows` flows, frozen `block` rows at a time.
    pub fn new(rows: usize, block: usize) -> Builder {
        let block = block.clamp(1, rows.max(1));
        Builder {
            rows,
            block,
            frozen: DataFrame::empty(),
            first_time: None,
            seq: Vec::with_capacity(block),
            time: Vec::with_capacity(block),
            uuid: [Vec::with_capacity(block), Vec::with_capacity(block)],
            columns: (0..COLUMNS).map(|_| Vec::with_capacity(block)).collect(),
            texts: Dict::default(),
            ips: Dict::default(),
            label_sets: FastMap::default(),
        }
    }

    fn label_code(&mut self, labels: &SymList) -> u32 {
        if labels.is_empty() {
            return 0;
        }
        let key = Arc::as_ptr(labels).cast::<u8>() as usize;
        if let Some((_, code)) = self.label_sets.get(&key) {
            return *code;
        }
        let code = self.texts.code(&Sym::from(join_labels(labels)));
        self.label_sets.insert(key, (labels.clone(), code));
        code
    }

    pub fn len(&self) -> usize {
        self.frozen.height() + self.seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The time of the first row added.
    pub fn first_time(&self) -> Option<i64> {
        self.first_time
    }

    /// Bytes the builder holds when its chunk is full: the bound it keeps to.
    pub fn bytes(&self) -> usize {
        self.rows * (32 + 4 * COLUMNS) + dict_bytes(&self.texts.values) + self.ips.values.len() * 40
    }

    pub fn push(&mut self, seq: u64, row: &Row) {
        self.first_time.get_or_insert(row.time_ns);
        self.seq.push(seq);
        self.time.push(row.time_ns);
        self.uuid[0].push((row.uuid >> 64) as u64);
        self.uuid[1].push(row.uuid as u64);
        let text = |b: &mut Builder, col: Col, s: &Sym| {
            let code = b.texts.code(s);
            b.columns[col as usize].push(code);
        };
        for (i, n) in row.numbers.iter().enumerate() {
            self.columns[i].push(*n);
        }
        text(self, Col::Node, &row.node);
        text(self, Col::SrcNamespace, &row.source.namespace);
        text(self, Col::SrcPod, &row.source.pod);
        text(self, Col::SrcWorkload, &row.source.workload);
        let ip = self.ips.code(&row.source_ip);
        self.columns[Col::SrcIp as usize].push(ip);
        self.columns[Col::SrcPort as usize].push(u32::from(row.source_port));
        self.columns[Col::SrcIdentity as usize].push(row.source.identity);
        text(self, Col::DstNamespace, &row.destination.namespace);
        text(self, Col::DstPod, &row.destination.pod);
        text(self, Col::DstWorkload, &row.destination.workload);
        let ip = self.ips.code(&row.destination_ip);
        self.columns[Col::DstIp as usize].push(ip);
        self.columns[Col::DstPort as usize].push(u32::from(row.destination_port));
        self.columns[Col::DstIdentity as usize].push(row.destination.identity);
        let empty = self.texts.values[0].clone();
        text(self, Col::Fqdn, row.fqdn.as_ref().unwrap_or(&empty));
        let (pns, pname) = row.policy.clone().unwrap_or((empty.clone(), empty));
        text(self, Col::PolicyNamespace, &pns);
        text(self, Col::Policy, &pname);
        let (query, l7, rcode) = match &row.dns {
            None => (None, 0, 0),
            Some((query, response, rcode)) => (Some(query), 1 + u32::from(*response), *rcode),
        };
        let empty = self.texts.values[0].clone();
        text(self, Col::DnsQuery, query.unwrap_or(&empty));
        self.columns[Col::L7 as usize].push(l7);
        self.columns[Col::DnsRcode as usize].push(rcode);
        let code = self.label_code(&row.source.labels);
        self.columns[Col::SrcLabels as usize].push(code);
        let code = self.label_code(&row.destination.labels);
        self.columns[Col::DstLabels as usize].push(code);
        if self.seq.len() >= self.block
            && let Err(e) = self.freeze()
        {
            tracing::error!("flow store: freezing a block of rows: {e}");
        }
    }

    /// A chunk of the rows so far; the builder keeps them (a query's snapshot). The full
    /// blocks are shared, the open one copied.
    pub fn snapshot(&self) -> Result<Chunk, PolarsError> {
        let mut frame = self.frozen.clone();
        let open = frame_of(
            self.seq.clone(),
            self.time.clone(),
            self.uuid.clone(),
            self.columns.clone(),
        )?;
        frame.vstack_mut_owned(open)?;
        Ok(Chunk::with_frame(
            frame,
            self.texts.values.clone().into(),
            self.ips.values.clone().into(),
        ))
    }

    /// The rows as a chunk, leaving the builder empty.
    pub fn seal(&mut self) -> Result<Chunk, PolarsError> {
        self.freeze()?;
        let mut old = std::mem::replace(self, Builder::new(self.rows, self.block));
        // One array a column, as before the blocks: filters over a chunk of several arrays
        // cost queries more. Column by column, each column's blocks freed as it is copied.
        old.frozen.rechunk_mut();
        Ok(Chunk::with_frame(
            old.frozen,
            old.texts.values.into(),
            old.ips.values.into(),
        ))
    }

    /// The open block's rows onto the frozen ones.
    fn freeze(&mut self) -> Result<(), PolarsError> {
        if self.seq.is_empty() {
            return Ok(());
        }
        let block = self.block;
        let taken = |v: &mut Vec<u32>| std::mem::replace(v, Vec::with_capacity(block));
        let taken_u64 = |v: &mut Vec<u64>| std::mem::replace(v, Vec::with_capacity(block));
        let open = frame_of(
            taken_u64(&mut self.seq),
            std::mem::replace(&mut self.time, Vec::with_capacity(block)),
            self.uuid.each_mut().map(taken_u64),
            self.columns.iter_mut().map(taken).collect(),
        )?;
        self.frozen.vstack_mut_owned(open)?;
        Ok(())
    }
}

/// Rows as a frame of a chunk's columns (each UUID as its two halves, high first).
pub(super) fn frame_of(
    seq: Vec<u64>,
    time: Vec<i64>,
    uuid: [Vec<u64>; 2],
    columns: Vec<Vec<u32>>,
) -> Result<DataFrame, PolarsError> {
    let height = seq.len();
    let mut cols: Vec<Column> = Vec::with_capacity(COLUMNS + 4);
    cols.push(UInt64Chunked::from_vec("seq".into(), seq).into_column());
    cols.push(Int64Chunked::from_vec("time".into(), time).into_column());
    for (half, name) in uuid.into_iter().zip(UUID_COLUMNS) {
        cols.push(UInt64Chunked::from_vec(name.into(), half).into_column());
    }
    for (values, (name, _)) in columns.into_iter().zip(SCHEMA) {
        cols.push(UInt32Chunked::from_vec(name.into(), values).into_column());
    }
    DataFrame::new(height, cols)
}

pub(super) fn dict_bytes(values: &[Sym]) -> usize {
    values.iter().map(|s| s.len() + 32).sum()
}
