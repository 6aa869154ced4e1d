"""Take the picture of the demo page (docs/demo.md), docs/demo.png: `pegasus demo` with the shipped run on
a free port, opened in Debian's headless Chromium (Selenium, Debian's chromedriver) at alpha 0.5,
seed 0, 16 samples, once the grid and the strip are on screen and Generate was pressed once more.

    python scripts/demo_screenshot.py      # needs: apt-get install -y chromium chromium-driver
"""
import shutil
import threading
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

from pegasus.demo import make_server

out = Path(__file__).resolve().parents[1] / "docs" / "demo.png"
server = make_server(port=0)
threading.Thread(target=server.serve_forever, daemon=True).start()
options = webdriver.ChromeOptions()
options.binary_location = shutil.which("chromium")
for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=960,840", "--hide-scrollbars"):
    options.add_argument(arg)
driver = webdriver.Chrome(options=options, service=Service(executable_path=shutil.which("chromedriver")))
try:
    driver.get(server.url)
    shown = "return ['grid', 'strip'].every((id) => +document.getElementById(id).dataset.version >= 1)"
    WebDriverWait(driver, 60).until(lambda d: d.execute_script(shown))
    # Generate once more: the timing line then tells a grid alone (the first also waited for the strip).
    driver.find_element("id", "generate").click()
    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return +document.getElementById('grid').dataset.version >= 2"))
    driver.save_screenshot(str(out))
finally:
    driver.quit()
    server.shutdown()
print(f"wrote {out}")
