package dev.blockbackup.formats.qcow2;

import java.util.OptionalLong;

/**
 * One internal snapshot of a qcow2 image, as its entry in the snapshot table records it and as
 * {@code qemu-img info} lists it (its JSON names in brackets). Read only: we neither make nor apply
 * internal snapshots, but a user's image may hold them (made by {@code qemu-img snapshot -c} or
 * savevm), and info shows them.
 *
 * @param id the unique id string [id], "1", "2", ... as QEMU numbers them
 * @param name the snapshot's name [name]
 * @param dateSec when it was taken, seconds since the epoch [date-sec]
 * @param dateNsec the nanoseconds of that second [date-nsec]
 * @param vmClockNsec the guest's virtual clock at that time, in nanoseconds ([vm-clock-sec] and
 *     [vm-clock-nsec] split it at the second)
 * @param vmStateSize bytes of saved VM state, 0 for a disk-only snapshot [vm-state-size]
 * @param icount the guest's instruction count, if the entry records one [icount]
 */
public record Qcow2Snapshot(
    String id, String name, long dateSec, long dateNsec, long vmClockNsec, long vmStateSize, OptionalLong icount) {}
