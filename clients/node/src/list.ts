/**
 * A doubly linked list threaded through its items. Adding and removing touch
 * only the item's own fields: no Map or Set entry, and so no identity hash
 * for each fresh object, which the lock cycle's hot path would otherwise pay
 * per command and per lease. An item is in at most one list.
 */

/** @internal The fields an item carries for its list. */
export interface Linked<T> {
  /** @internal Whether the item is in a list. */
  linked: boolean;
  /** @internal */
  prevLink: T | undefined;
  /** @internal */
  nextLink: T | undefined;
}

/** @internal */
export class LinkedList<T extends Linked<T>> {
  private head: T | undefined;
  private tail: T | undefined;
  private count = 0;

  get size(): number {
    return this.count;
  }

  /** Whether `item` is in a list (this one, as long as each item only ever joins one). */
  has(item: T): boolean {
    return item.linked;
  }

  /** Appends `item`; a no-op if it is already in. */
  add(item: T): void {
    if (item.linked) return;
    item.linked = true;
    item.prevLink = this.tail;
    item.nextLink = undefined;
    if (this.tail) this.tail.nextLink = item;
    else this.head = item;
    this.tail = item;
    this.count++;
  }

  /** Removes `item`; a no-op if it is not in. */
  delete(item: T): void {
    if (!item.linked) return;
    item.linked = false;
    const { prevLink: prev, nextLink: next } = item;
    if (prev) prev.nextLink = next;
    else this.head = next;
    if (next) next.prevLink = prev;
    else this.tail = prev;
    item.prevLink = item.nextLink = undefined;
    this.count--;
  }

  /** Calls `fn` on each item, oldest first; `fn` may delete the item it is given. */
  forEach(fn: (item: T) => void): void {
    for (let item = this.head; item; ) {
      const next = item.nextLink;
      fn(item);
      item = next;
    }
  }
}
