"""Write MNIST's 10 000 test images as PNGs (<out>/<label>/<index>.png) to try the folder data set on."""
import sys
from pathlib import Path

from PIL import Image

from vlae_fast.data import load_dataset

src, out = sys.argv[1], Path(sys.argv[2])
data = load_dataset("mnist", "test", src)
for i in range(len(data)):
    d = out / str(int(data.labels[i]))
    d.mkdir(parents=True, exist_ok=True)
    Image.fromarray((data.x[i, 0] * 255).round().byte().numpy(), "L").save(d / f"{i:05d}.png")
print(f"wrote {len(data)} PNGs under {out}")
