/*M!999999\- enable the sandbox mode */ 
-- MariaDB dump 10.19  Distrib 10.11.19-MariaDB, for debian-linux-gnu (x86_64)
--
-- Host: 127.0.0.1    Database: inventory
/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;
/*!40101 SET NAMES utf8mb4 */;
/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */;

-- CHANGE MASTER TO MASTER_LOG_FILE='mariadb-bin.000001', MASTER_LOG_POS=208527;

DROP TABLE IF EXISTS `items`;
/*!40101 SET @saved_cs_client     = @@character_set_client */;
/*!40101 SET character_set_client = utf8 */;
CREATE TABLE `items` (
  `id` int(11) NOT NULL,
  `grant` varchar(64) DEFAULT 'INSERT INTO other.t' COMMENT 'system \\! ls',
  `other.t` blob,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
/*!40101 SET character_set_client = @saved_cs_client */;
LOCK TABLES `items` WRITE;
/*!40000 ALTER TABLE `items` DISABLE KEYS */;
INSERT INTO `items` VALUES
(1,'USE the force\nCREATE DATABASE x; \\! rm -rf /','GRANT ALL',0x5c21),
(2,'it\'s \\u here',NULL,NULL),
(-3.5e2,'',"",0x);
INSERT INTO `items` VALUES (4,'a'),(5,'b; DROP TABLE other.t');
/*!40000 ALTER TABLE `items` ENABLE KEYS */;
UNLOCK TABLES;
/*!50001 CREATE ALGORITHM=UNDEFINED */
/*!50013 DEFINER=`cloudops`@`127.0.0.1` SQL SECURITY DEFINER */
/*!50001 VIEW `cheap` AS select `items`.`id` AS `id` from (`items` join `items` `i2` on(`i2`.`id` = `items`.`id`)) */;
DELIMITER ;;
/*!50003 CREATE*/ /*!50017 DEFINER=`cloudops`@`127.0.0.1`*/ /*!50003 TRIGGER `items_touch` BEFORE UPDATE ON `items` FOR EACH ROW BEGIN
  -- keep a note: system \! ls, source x.sql
  SET NEW.`grant` = 'source /etc/passwd';
  /* a comment over
     two lines: don't \! here */
END */;;
DELIMITER ;
/*!50003 SET sql_mode              = 'STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION' */ ;
/*!50003 SET @saved_sql_mode       = @@sql_mode */ ;
DELIMITER ;;
CREATE DEFINER=`cloudops`@`127.0.0.1` PROCEDURE `restock`(IN amount INT)
BEGIN
  UPDATE `items` SET `id` = `id` + amount WHERE `items`.`id` > 0;
  INSERT INTO `items` (`id`) SELECT `id` FROM `items`;
END ;;
DELIMITER ;
/*!50003 SET sql_mode              = @saved_sql_mode */ ;
/*!50106 CREATE*/ /*!50117 DEFINER=`cloudops`@`127.0.0.1`*/ /*!50106 EVENT `tidy` ON SCHEDULE EVERY 1 DAY STARTS '2024-01-01 00:00:00' ON COMPLETION NOT PRESERVE ENABLE DO DELETE FROM `items` WHERE `id` < 0 */ ;;
/*!40101 SET SQL_MODE=@OLD_SQL_MODE */;
/*!40101 SET CHARACTER_SET_CLIENT=@OLD_CHARACTER_SET_CLIENT */;
-- Dump completed on 2026-12-02 16:16:40
