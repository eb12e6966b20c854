//! How every listing of both backends fills one page: it asks its query for one row past
//! the page (`limit + 1`, which says whether a next page exists), keeps rows while they fit
//! the count and the byte bound, and ends with the cursor of the last row kept. Written once
//! here, used by the run and event listings of SQLite and MongoDB.

use super::{Page, clamp_limit};
use crate::limits::MAX_PAGE_BYTES;

/// One page being filled, row by row, from a query in page order.
pub(crate) struct PageFill<T> {
    items: Vec<T>,
    bytes: usize,
    limit: usize,
    /// A row was left over: there is a next page.
    more: bool,
}

impl<T> PageFill<T> {
    /// A page of `requested` items (0 for the default; capped at `MAX_LIMIT`).
    pub(crate) fn new(requested: usize) -> Self {
        PageFill { items: Vec::new(), bytes: 0, limit: clamp_limit(requested), more: false }
    }

    /// How many rows the query should return at most: the page, and one more.
    pub(crate) fn rows_to_read(&self) -> usize {
        self.limit + 1
    }

    /// Offers the next row, with its size in bytes as JSON. False once the page is full (this
    /// row is left for the next page): at most `limit` items and about `MAX_PAGE_BYTES`
    /// (always one item, when one is left), so a read's memory stays bounded however large
    /// the stored documents are. Stop reading at false.
    pub(crate) fn push(&mut self, item: T, size: usize) -> bool {
        if self.items.len() == self.limit || (!self.items.is_empty() && self.bytes + size > MAX_PAGE_BYTES) {
            self.more = true;
            return false;
        }
        self.bytes += size;
        self.items.push(item);
        true
    }

    /// The page; `next` is the cursor of the last item kept, when a row was left over.
    pub(crate) fn finish(self, cursor_of: impl Fn(&T) -> String) -> Page<T> {
        let next = if self.more { self.items.last().map(cursor_of) } else { None };
        Page { items: self.items, next }
    }

    /// Fills the page from `rows` (each an item and its size), reading no further than it needs.
    pub(crate) fn fill_from<E>(
        mut self,
        rows: impl IntoIterator<Item = Result<(T, usize), E>>,
        cursor_of: impl Fn(&T) -> String,
    ) -> Result<Page<T>, E> {
        for row in rows {
            let (item, size) = row?;
            if !self.push(item, size) {
                break;
            }
        }
        Ok(self.finish(cursor_of))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_limit_and_says_when_more_is_left() {
        let rows = (1..=4).map(|n| Ok::<_, ()>((n, 1)));
        let page = PageFill::new(3).fill_from(rows, |n: &i32| n.to_string()).expect("page");
        assert_eq!((page.items, page.next), (vec![1, 2, 3], Some("3".to_owned())));
        let rows = (1..=3).map(|n| Ok::<_, ()>((n, 1)));
        let page = PageFill::new(3).fill_from(rows, |n: &i32| n.to_string()).expect("page");
        assert_eq!((page.items, page.next), (vec![1, 2, 3], None));
    }

    #[test]
    fn cuts_at_the_byte_bound_but_always_keeps_one() {
        let rows = [Ok::<_, ()>((1, MAX_PAGE_BYTES)), Ok((2, 1))];
        let page = PageFill::new(10).fill_from(rows, |n: &i32| n.to_string()).expect("page");
        assert_eq!((page.items, page.next), (vec![1], Some("1".to_owned())));
        let fill = PageFill::<i32>::new(0);
        assert_eq!(fill.rows_to_read(), super::super::DEFAULT_LIMIT + 1);
    }
}
