"""Screenshots a page in headless Chromium (Debian's chromium package), the whole page's height.

  python tools/screenshot.py runs/demo/eval/report.html --output docs/report.png

Fails, printing them, if the page has console errors or pictures that do not load.
"""

from absl import app, flags

from deeplabv3_tf.pages.browser import Browser, BrowserError
from deeplabv3_tf.apps.cli import run_reporting_errors

flags.DEFINE_string("output", None, "PNG to write.", required=True)
flags.DEFINE_integer("width", 1280, "Window width in CSS pixels.")
flags.DEFINE_integer("height", 900, "Window height (and the least screenshot height).")
flags.DEFINE_integer("max_height", 0, "Crop the screenshot to this height (0: the whole page).")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("Give one page (a file or URL).")

    def run():
        with Browser(width=FLAGS.width, height=FLAGS.height) as browser:
            loaded = browser.load(argv[1])
            broken = [i["src"] for i in loaded["images"] if not i["natural_width"]]
            if loaded["errors"] or broken:
                raise BrowserError(f"{argv[1]}: " + "; ".join(
                    loaded["errors"] + [f"picture not loaded: {src}" for src in broken]))
            browser.screenshot(FLAGS.output, max_height=FLAGS.max_height)
        print(f"{FLAGS.output}: {len(loaded['images'])} pictures loaded, no console errors")

    return run_reporting_errors(run, extra=(BrowserError,))


if __name__ == "__main__":
    app.run(main)
