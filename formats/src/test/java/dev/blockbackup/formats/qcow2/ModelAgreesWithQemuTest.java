package dev.blockbackup.formats.qcow2;

import dev.blockbackup.formats.qcow2.ModelOps.Discard;
import dev.blockbackup.formats.qcow2.ModelOps.Flush;
import dev.blockbackup.formats.qcow2.ModelOps.Op;
import dev.blockbackup.formats.qcow2.ModelOps.Write;
import dev.blockbackup.formats.qcow2.ModelOps.Zero;
import dev.blockbackup.testkit.Property;
import dev.blockbackup.testkit.QemuImg;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * The byte-array model our qcow2 tests judge the driver by, judged in turn by QEMU: the same
 * operations applied with qemu-io (which discards only whole clusters, and zeroes exactly its
 * range) leave an image that qemu-img compare finds equal to the model. Guards the tests' own
 * arithmetic (discard rounding, the image's partial last cluster, backing reads).
 */
@Tag("interop")
class ModelAgreesWithQemuTest {

  @TempDir Path dir;

  @ParameterizedTest(name = "{0}-byte clusters, {1} bytes, backing {2}")
  @CsvSource({"4096, 3147264, raw", "65536, 16775680, none", "2097152, 25169408, qcow2"})
  void qemuIoAppliesTheOpsAsTheModelDoes(int cluster, long size, String backingFormat) throws Exception {
    byte[] backing = null;
    String backingFile = null;
    if (!backingFormat.equals("none")) {
      backing = Qcow2ModelPropertyTest.baseContent(size - 5 * 512, 42);
      Path baseRaw = dir.resolve("base.raw");
      ModelRunner.writeRaw(baseRaw, backing);
      backingFile = "base.raw";
      if (backingFormat.equals("qcow2")) {
        backingFile = "base.qcow2";
        QemuImg.img("convert", "-f", "raw", "-O", "qcow2", baseRaw, dir.resolve(backingFile)).assertExit(0);
      }
      backing = ModelRunner.fit(backing, size);
    }
    byte[] base = backing;
    String baseFile = backingFile;
    Property.check("qemu-io agrees with the model", 15,
        r -> onlyFillWrites(ModelOps.generate(r, size, cluster, 40, 0)),
        ops -> {
          Path img = dir.resolve("qemu.qcow2");
          List<Object> create = new ArrayList<>(List.of("create", "-q", "-f", "qcow2", "-o", "cluster_size=" + cluster));
          if (baseFile != null) {
            create.addAll(List.of("-b", baseFile, "-F", backingFormat));
          }
          create.add(img);
          create.add(size);
          QemuImg.img(create.toArray()).assertExit(0);
          byte[] model = base == null ? new byte[(int) size] : base.clone();
          List<Object> io = new ArrayList<>(List.of("-f", "qcow2"));
          for (Op op : ops) {
            String cmd = command(op, model, size, cluster);
            if (cmd != null) {
              io.add("-c");
              io.add(cmd);
            }
          }
          io.add(img);
          QemuImg.io(io.toArray()).assertExit(0);
          QemuImg.assertCheckClean(img);
          Path raw = dir.resolve("model.raw");
          ModelRunner.writeRaw(raw, model);
          QemuImg.assertIdentical(img, "qcow2", raw, "raw");
          Files.delete(img);
          Files.delete(raw);
        });
  }

  private static List<Op> onlyFillWrites(List<Op> ops) {
    List<Op> out = new ArrayList<>();
    for (Op op : ops) {
      if (op instanceof ModelOps.Compress) {
        continue; // qemu-io cannot write compressed clusters; ModelRunner checks them against the driver alone
      }
      if (op instanceof Write w && w.fill() < 0) {
        out.add(new Write(w.offset(), w.length(), w.seed(), (int) (w.seed() & 0xff), w.fua()));
      } else {
        out.add(op);
      }
    }
    return out;
  }

  /** The qemu-io command for {@code op}, after applying it to {@code model} as the driver's tests do. */
  private static String command(Op op, byte[] model, long size, int cluster) {
    ModelRunner.applyToModel(op, model, size, cluster);
    if (op instanceof Write w) {
      return "write " + (w.fua() ? "-f " : "") + "-P " + w.fill() + " " + w.offset() + " " + w.length();
    } else if (op instanceof Zero z) {
      return "write -z " + (z.mayUnmap() ? "-u " : "") + z.offset() + " " + z.length();
    } else if (op instanceof Discard d) {
      return "discard " + d.offset() + " " + d.length();
    } else if (op instanceof Flush) {
      return "flush";
    }
    return null; // reads and reopens change nothing
  }
}
