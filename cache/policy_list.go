package cache

// slotLinks holds the prev/next links of intrusive doubly linked lists over
// slot ids. A slot is on at most one list at a time, so one pair of arrays
// serves every list of a policy; each list is a slotList header.
type slotLinks struct {
	prev, next []int32
}

// slotList is one list over slotLinks: head is the front, tail the back.
type slotList struct {
	head, tail int32
	len        int
}

func newSlotList() slotList { return slotList{head: noSlot, tail: noSlot} }

// grow makes slot ids [0, n) valid.
func (k *slotLinks) grow(n int) {
	for len(k.prev) < n {
		k.prev = append(k.prev, noSlot)
		k.next = append(k.next, noSlot)
	}
}

// pushFront puts s, which is on no list, at the front of l.
func (k *slotLinks) pushFront(l *slotList, s int32) {
	k.prev[s], k.next[s] = noSlot, l.head
	if l.head != noSlot {
		k.prev[l.head] = s
	} else {
		l.tail = s
	}
	l.head = s
	l.len++
}

// pushBack puts s, which is on no list, at the back of l.
func (k *slotLinks) pushBack(l *slotList, s int32) {
	k.prev[s], k.next[s] = l.tail, noSlot
	if l.tail != noSlot {
		k.next[l.tail] = s
	} else {
		l.head = s
	}
	l.tail = s
	l.len++
}

// remove takes s off l, which must hold it.
func (k *slotLinks) remove(l *slotList, s int32) {
	p, n := k.prev[s], k.next[s]
	if p != noSlot {
		k.next[p] = n
	} else {
		l.head = n
	}
	if n != noSlot {
		k.prev[n] = p
	} else {
		l.tail = p
	}
	k.prev[s], k.next[s] = noSlot, noSlot
	l.len--
}
