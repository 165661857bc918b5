"""package.xml, setup.py and vlm3r_ros.__version__ describe the same package."""
import ast
import xml.etree.ElementTree as ET
from pathlib import Path

import vlm3r_ros

ROOT = Path(__file__).resolve().parents[2]


def setup_py_keywords():
    """The literal keyword arguments of the setup(...) call in setup.py."""
    tree = ast.parse((ROOT / 'setup.py').read_text())
    constants = {
        node.targets[0].id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, 'id', None) == 'setup':
            keywords = {}
            for kw in node.keywords:
                if isinstance(kw.value, ast.Constant):
                    keywords[kw.arg] = kw.value.value
                elif isinstance(kw.value, ast.Name) and kw.value.id in constants:
                    keywords[kw.arg] = constants[kw.value.id]
            return keywords
    raise AssertionError('setup.py has no setup(...) call')


def test_package_xml_names_the_package():
    root = ET.parse(ROOT / 'package.xml').getroot()
    assert root.tag == 'package'
    assert root.get('format') == '3'
    assert root.findtext('name') == 'vlm3r_ros'
    assert root.findtext('export/build_type') == 'ament_cmake'


def test_versions_agree():
    xml_version = ET.parse(ROOT / 'package.xml').getroot().findtext('version')
    setup = setup_py_keywords()
    assert setup['name'] == 'vlm3r_ros'
    assert xml_version == setup['version'] == vlm3r_ros.__version__, (
        f'package.xml says {xml_version}, setup.py says {setup["version"]}, '
        f'vlm3r_ros.__version__ says {vlm3r_ros.__version__}: make all three equal')
